"""NVTabular workflows: dataset filtering, labels, features, splits.

Importing this package first applies our fixes for Merlin's CPU defects.
"""
import warnings

from recfunnel.workflows import merlin_cpu_fixes

merlin_cpu_fixes.apply()
# Said once per Dataset, hundreds of times a run; CPU mode is this project's documented choice.
warnings.filterwarnings("ignore", message="Initializing an NVTabular Dataset in CPU mode")
# dask 2023.3 announces a deprecation of read_parquet's aggregate_files, which Merlin passes on.
warnings.filterwarnings("ignore", message=".*aggregate_files.*", category=FutureWarning)
