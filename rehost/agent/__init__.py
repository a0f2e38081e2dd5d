"""The rehost agent (mobility service) for physical and other unmanaged machines.

The agent runs on the source machine (``rehost-agent`` / ``python -m rehost.agent``) with few
dependencies (stdlib, cryptography, xxhash): it must not import the server's packages.
``rehost.agent.pki`` and ``rehost.agent.client`` are the server's side of it.

Channels, all mutual TLS with certificates of the vault's CA:
- enrollment: the agent POSTs a CSR to the server's enrollment endpoint, pinning the
  server's certificate by the fingerprint printed with the one-time passphrase;
- control: the server calls the agent's HTTPS API (inventory, changes, commit, freeze...);
- data: the server reads the agent's qemu-nbd exports (NBD over TLS, read-only).
"""

AGENT_VERSION = "0.1.0"
#: The common name of the replication server's certificate (agents accept only it).
SERVER_CN = "rehost-server"
