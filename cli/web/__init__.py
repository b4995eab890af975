"""``saejobs serve``: a local web app over the results database (jobs with live progress, a sweep's grid with
per-token concept activation, generations by stable URL, sweep-vs-sweep and Neuronpedia comparisons), and
the same pages written as static files (``saejobs report --site``). Read-only but for cancel and retry."""
