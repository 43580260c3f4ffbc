"""The training and evaluation engine (PyTorch): fit/resume, fine-tuning, evaluation, export,
ensembles and studies. Importing it has no side effect; :func:`faceattr.engine.fit.fit` and
:func:`~faceattr.engine.fit.resume` tune glibc's allocator for PyTorch when they start
(:mod:`faceattr.malloc`), as the CLI does.
"""
