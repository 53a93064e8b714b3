"""Dataset conversion: original formats (IDX, CIFAR pickles, image folders) to parquet shards.

Kept empty on purpose so importing one submodule (e.g. the codec in a Ray Data worker) does not
pull in the readers and writers.
"""
