"""The image archive: storage locations and durable DICOM Part 10 files.

* :mod:`engine.archive.part10` encodes the File Meta Information of a received
  dataset and finds where a Part 10 file's dataset starts (pure).
* :mod:`engine.archive.structure` checks that an encoded dataset is
  well-formed, element by element, without reading its values (pure).
* :mod:`engine.archive.location` writes files into a storage location: a
  temporary name, fsync, a no-clobber link into place, the directory fsynced.
* :mod:`engine.archive.objects` is the location interface (put, open, stat,
  delete, iterate, check) and the fixity of a stored file;
  :mod:`engine.archive.fs_location` and :mod:`engine.archive.s3_location`
  implement it for a directory and an S3-compatible object store;
  :mod:`engine.archive.s3_primary` lets C-STORE write into an object store.
* :mod:`engine.archive.archive` builds the two locations from ``archive:`` and
  reads an instance back (``current_instance``, ``open_current``,
  ``copy_current``: the primary, else the secondary).
* :mod:`engine.archive.replication` owes and makes the verified copy to the
  secondary (through the outbox); :mod:`engine.archive.fixity` verifies and
  restores copies; :mod:`engine.archive.tiering` lets old instances leave the
  primary; :mod:`engine.archive.service` wires them into the running engine.
"""
