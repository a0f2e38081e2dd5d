Buffer = bytes | bytearray | memoryview

def diff_and_seal(
    data: Buffer,
    old: Buffer,
    *,
    hash_key: bytes,
    id_max: int,
    level: int,
    data_key: bytes | None,
    raw: bool,
    copy: bool,
) -> tuple[bytes, list[tuple[int, int, bool]], list[tuple[str, bytes, int] | None]]: ...
