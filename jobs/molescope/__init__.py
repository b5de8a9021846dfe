"""molescope: Spark stages that clean, featurize, rebalance, train on and report on HAM10000 batches."""

__version__ = "0.1.0"
