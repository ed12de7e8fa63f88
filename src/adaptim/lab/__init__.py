"""The lab: fair, stored, reproducible optimizer comparisons on real problems.

The lab uses the optimizers as any user would; nothing below ``adaptim.lab``
imports from it.
"""
