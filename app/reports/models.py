from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Stats(BaseModel):
    total: int
    by_state: dict[str, int]
    by_severity: dict[str, int]
    by_category: dict[str, int]
    open_overdue: int
    median_minutes_to_assess: float | None
    median_minutes_to_first_response: float | None


class ReportRow(BaseModel):
    agency: str = Field(description="Lead agency code, or `unassigned`")
    incidents: int
    incidents_with_response: int
    first_responses_on_time: int
    median_minutes_to_first_response: float | None


class SpokespersonReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: datetime = Field(alias="from")
    to: datetime
    rows: list[ReportRow]
