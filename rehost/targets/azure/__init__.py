"""The Azure target's building blocks (issue 11).

- ``vhd``: the fixed VHD layout Azure wants for a disk (raw bytes, size rounded up to a whole
  MiB, then a 512-byte footer): writing and checking the footer.
- ``plan``: which 512-byte pages of a replica change between two recovery points, from
  rehost's own manifests, cut into Put Page / Clear Page requests (pure logic, no I/O).
- ``blob``: a page blob in a storage account through ``azure-storage-blob`` (imported
  lazily: each Azure package costs 0.2-0.35 s), with retries on 408/429/5xx counted and
  secrets kept out of every message.
- ``pageblob``: keep one disk's page blob in sync with the recovery points (one blob
  snapshot per point), resumable after a cut or a kill.
- ``replica``: a machine's replica blobs: names, every disk of a point, a point's snapshot
  copied into a blob of its own for failover.
- ``upload``: a whole disk from the target seam's extent stream into a new blob (Put Page
  only: a managed disk opened for upload), for targets without a replica.

Nothing here imports the vault or the services: ``AzureTarget.stage_disks`` (to come, on
top of the target seam) calls ``sync_disk``/``materialize`` once per disk.
"""
