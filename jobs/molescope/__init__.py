"""molescope: Spark stages that clean, featurize, rebalance, train on and report HAM10000 dermoscopy batches."""

__version__ = "0.1.0"
