"""faceattr: facial attribute recognition (the 40 CelebA attributes) from one command line.

Python API (each function is its command, with the command's option names)::

    import faceattr
    results = faceattr.predict("photo.jpg")          # default model, faces detected + aligned
    results[0]["faces"][0]["attributes"]            # e.g. ["Smiling", "Young", ...]
    faceattr.predict("photos/", no_detect=True)      # a folder of aligned crops
    faceattr.index(["photos/"], db="library.db")     # a searchable index of a collection
    faceattr.search("Eyeglasses and not Male", db="library.db")["results"]
"""

__version__ = "0.1.0"  # before the imports below: modules they load may read it

from faceattr.api import index, predict, search  # noqa: E402

__all__ = ["__version__", "index", "predict", "search"]


def __dir__() -> list[str]:
    return list(__all__)
