"""The image archive: storage locations and durable DICOM Part 10 files.

* :mod:`engine.archive.part10` encodes the File Meta Information of a received
  dataset and finds where a Part 10 file's dataset starts (pure).
* :mod:`engine.archive.structure` checks that an encoded dataset is
  well-formed, element by element, without reading its values (pure).
* :mod:`engine.archive.location` writes files into a storage location: a
  temporary name, fsync, a no-clobber link into place, the directory fsynced.
"""
