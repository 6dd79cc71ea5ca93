"""Benchmarks as a product: a suite file (configs x seeds x held-out evaluation) runs as Ray Tune
trials of ordinary metaray runs (`metaray bench`, `metaray sweep`), every result in one schema
with its provenance, aggregated with rliable (`metaray report`). Above `cluster` in the layers:
it drives whole runs and never reaches into one."""
