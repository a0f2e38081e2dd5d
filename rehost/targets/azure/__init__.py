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

Nothing here imports the vault or the services: ``AzureTarget.stage_disks`` (to come, on
top of the target seam) calls ``sync_disk`` once per disk.
"""
