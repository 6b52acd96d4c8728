"""Development tools: run the product's parts on one machine without a cluster. Used by the
tests, the demo and the benchmarks; not shipped in the image and never a proof of a real
cluster's behaviour."""
