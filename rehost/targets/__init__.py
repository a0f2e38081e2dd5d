"""Target providers: where failed-over machines run (the contract in ``base``, the kinds in
``registry``; ``local`` is this host's QEMU, ``memory`` a labelled test double)."""
