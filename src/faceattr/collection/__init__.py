"""Searchable photo collections: ``faceattr index`` and ``faceattr search``.

:mod:`~faceattr.collection.indexer` walks folders and stores every face's attribute
probabilities in an index (:mod:`~faceattr.collection.store`, SQLite);
:mod:`~faceattr.collection.query` parses the boolean query language and
:mod:`~faceattr.collection.search` answers queries, ``--like`` and the HTML contact sheet.
"""
