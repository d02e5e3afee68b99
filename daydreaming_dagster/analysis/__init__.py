"""Analysis: judge-score parsing, the result tables, judge agreement, replicate reliability and
variance, usage and cost, figures.

Pure functions of tables. May import the standard library, numpy, pandas, scipy, krippendorff,
matplotlib (lazily: they cost seconds at start-up) and `experiment`; never Dagster or the store."""
