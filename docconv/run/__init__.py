"""The conversion run: pages in, through the engine, documents out.

* :mod:`~docconv.run.options` - what a run is asked to do (:class:`ConvertOptions`, tasks, prompts);
* :mod:`~docconv.run.pipeline` - the driver: documents -> pages -> modes -> engine batches ->
  pages -> outputs, with retries, failures and streaming;
* :mod:`~docconv.run.modes` - the resolution mode of each page (``--mode auto``) and the retry ladder;
* :mod:`~docconv.run.text_density` - a page's text tokens estimated from its ink, for ``auto``;
* :mod:`~docconv.run.bands` - very long pages cut into overlapping bands and stitched back;
* :mod:`~docconv.run.journal` - finished pages made durable, so a killed run resumes;
* :mod:`~docconv.run.progress` - what the user sees on stderr while it runs.
"""
