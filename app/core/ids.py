import uuid_utils


def new_id() -> str:
    """UUIDv7: time-ordered, so ids sort by creation and index well."""
    return str(uuid_utils.uuid7())
