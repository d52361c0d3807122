"""Output: raw model text -> blocks -> documents -> files.

* :mod:`~docconv.output.postprocess` - raw DeepSeek-OCR text to layout blocks (never crashes);
* :mod:`~docconv.output.document` - the document model (:class:`Document`, :class:`Page`,
  :class:`Block`), plain data that the journal, the writers and ``--format json`` share;
* :mod:`~docconv.output.tables` - table HTML to rows, Markdown and CSV;
* :mod:`~docconv.output.latex` - math delimiters;
* :mod:`~docconv.output.markdown` and :mod:`~docconv.output.html` - the two renderers;
* :mod:`~docconv.output.options` - the formats and :class:`RenderOptions`;
* :mod:`~docconv.output.writers` - a document in any format, table CSVs, figure crops;
* :mod:`~docconv.output.raw` - the ``--keep-raw`` file;
* :mod:`~docconv.output.rerender` - raw files back to any format, without a model.

A new output format is a renderer module here, its name in ``options.FORMATS`` and
``options.EXTENSIONS``, and one branch in :func:`docconv.output.writers.render_document`.
"""
