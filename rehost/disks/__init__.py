"""Everything that reads or writes a disk: extents, image formats, qemu-nbd and NBD."""
