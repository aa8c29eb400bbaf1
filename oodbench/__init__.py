"""oodbench: do deep generative models know what they don't know?

A benchmark that trains likelihood models (Glow, CV-Glow, ...) on one image dataset and measures
whether their likelihood separates that dataset's test set from out-of-distribution sets
(Nalisnick et al., ICLR 2019). See README.md for the commands and PAPER.md for the science.
"""

__version__ = "0.1.0"
