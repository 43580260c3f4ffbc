"""The training and evaluation engine (PyTorch).

Importing it tunes glibc's allocator for PyTorch (:mod:`faceattr.malloc`), as the CLI does.
"""

from faceattr.malloc import tune_allocator

tune_allocator()
