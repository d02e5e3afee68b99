"""The results report: one self-contained HTML page a researcher opens in a browser.

`payload` turns the result tables and the texts into the page's data (compact columns for the
matrix, the texts in compressed chunks decoded on demand); `page` writes the HTML around it, with
the CSS and JavaScript of `static/` inlined. Pure functions. May import the standard library,
numpy, pandas, `experiment` and `analysis`; never Dagster or the store."""
