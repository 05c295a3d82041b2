"""hsync's LDAP plugin: ``ldap://host:port/BASE_DN``, ``ldaps://...`` and ``ldif:PATH``.

Entries map to hsync nodes of kind ``entry``: the key is the path of normalized RDNs
from the base, the identity the entry's entryUUID, the payload its user attributes
(values normalized by matching rule). See ``backend.LdapBackend`` and
``ldif_backend.LdifBackend``; ``connection`` connects and searches for both the backend
and the watcher (``watch.SyncreplWatch``).
"""
