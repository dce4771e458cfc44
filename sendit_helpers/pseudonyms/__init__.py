"""Pseudonyms: identifier providers, the UID mapper and the site secret.

The family of providers that turn a patient's identifiers into research ones, the
keyed UID mapper and the site secret they are keyed with, one concept per module:

``provider``
    The interface (:class:`~sendit_helpers.pseudonyms.provider.StudyKey`,
    :class:`~sendit_helpers.pseudonyms.provider.Pseudonyms`, ``IdentifierProvider``,
    ``ProviderKind``), the helpers the providers share, and ``make_provider``, which
    imports the chosen provider's module.
``local``, ``crosswalk``, ``rest``
    The three providers: keyed HMAC, an honest broker's CSV, the REST identifier service.
``uids``
    ``UidMapper``, consistent UID replacement keyed with the site secret.
``secret``
    The site secret: ``load_site_secret``, ``site_secret_path``, ``SECRET_ENV``.

``pseudonyms`` imports only ``core`` (``tests/test_layers.py`` enforces it).
"""
