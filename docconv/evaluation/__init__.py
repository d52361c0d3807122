"""``docconv eval``: how well a model reads text back from page images (optical compression).

``truth`` finds the pages and the text each holds (compress manifests, PDF text layers, images
with a sidecar), ``run`` reads them in each mode through the engine (or takes saved outputs,
``predictions``) and journals every score, ``metrics`` scores a page the way the Fox benchmark
does, ``report`` groups the scores into the paper's Table 2 and renders it, ``progress``
reports on stderr.
"""
