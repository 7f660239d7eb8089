"""NVTabular workflows: dataset filtering, labels, features, splits.

Importing this package first applies our fixes for Merlin's CPU defects.
"""
from workflows import merlin_cpu_fixes

merlin_cpu_fixes.apply()
