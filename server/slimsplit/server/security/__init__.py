"""Who may use the server: device identity (mTLS certificates), bearer tokens from the devices file, per-model
authorization, per-device limits, revocation on reload, and the audit log.

* :mod:`~slimsplit.server.security.devices` - the devices file (device id -> token hash, models, limits);
* :mod:`~slimsplit.server.security.guard` - the transport-neutral policy (:class:`Guard`);
* :mod:`~slimsplit.server.security.interceptor` - the ``grpc.aio`` interceptor over it;
* :mod:`~slimsplit.server.security.identity`, :mod:`~slimsplit.server.security.limits`,
  :mod:`~slimsplit.server.security.audit` - certificate identities, token buckets, the audit log.
"""
