"""Model weights: hub ids and local directories turned into checkpoint directories an engine loads.

Nothing here touches a tensor: this is a cache of files, built on huggingface_hub. Layout under
:func:`docconv.models.store.cache_dir` (``DOCCONV_CACHE`` or the platform user cache dir):

* ``hub/`` - a standard Hugging Face cache (``models--org--name/{blobs,snapshots,refs}``), pinned
  to a commit; huggingface_hub lays it out and docconv streams the blobs with huggingface_hub's
  ``http_get`` so an interrupted transfer resumes with an HTTP Range request.
* ``partial/`` - bytes of unfinished downloads, kept across runs so a killed download resumes.
* ``imported/`` - checkpoints copied in by ``docconv models import --copy``.
* ``locks/`` - one :class:`filelock.FileLock` per model, held around download and resolve, so two
  docconv processes never download the same model twice nor read a half-written snapshot.
* ``docconv-models.json`` - what docconv knows about each cached model: where it lives, the commit it
  is pinned to and, per file, the hash the hub announced at download time.

Hashes: for LFS files (the weights) the hub's ETag is the sha256 of the content; for small git
files it is the git blob sha1 (``sha1(b"blob <size>\\0" + content)``). docconv records what the hub
gives and verifies each file with the matching algorithm. Imported checkpoints get sha256 hashes
computed at import time.

The modules, one job each:

* :mod:`~docconv.models.errors` - what can go wrong, one line each that says what to do;
* :mod:`~docconv.models.registry` - the models docconv knows before anything is downloaded;
* :mod:`~docconv.models.store` - the locked JSON record of cached models, and file hashing;
* :mod:`~docconv.models.checkpoint` - the one check that a directory is a usable checkpoint;
* :mod:`~docconv.models.download_progress` - huggingface_hub's progress hook drawn with rich;
* :mod:`~docconv.models.hub` - resumable, verified downloads from the hub;
* :mod:`~docconv.models.hf_cache` - reusing a snapshot already in the user's Hugging Face cache;
* :mod:`~docconv.models.resolve` - a ``--model`` value to a directory (what an engine calls);
* :mod:`~docconv.models.manage` - ``docconv models import / verify / rm / list``.
"""
