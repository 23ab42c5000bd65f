"""Reconciliation of stored images with their order (IHE RAD TF-2 Appendix A, reference section 6).

Pure code over values: which keys of a header name an order (:mod:`.keys`),
what the order says the header should hold and how the header changes, with
OriginalAttributesSequence recording every previous value (:mod:`.coerce`), the
character set the result needs (:mod:`.charset`), and the Part 10 rewrite that
re-encodes only the header and streams the rest of the file (:mod:`.rewrite`).
The database side (finding the order, linking the study) is
:mod:`engine.domain.reconcile`.
"""
