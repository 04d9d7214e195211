from __future__ import annotations

from enum import StrEnum

from sqlmodel import Field, SQLModel

from app.core.types import enum_type, json_column


class AgencyKind(StrEnum):
    government_office = "government_office"
    ministry = "ministry"
    ministry_level = "ministry_level"
    government_agency = "government_agency"
    province = "province"
    press = "press"
    other = "other"


class Spokesperson(SQLModel):
    name: str = Field(min_length=1, max_length=200)
    title: str = Field(default="", max_length=200)
    phone: str = Field(default="", max_length=50)
    email: str = Field(default="", max_length=200)


CODE_PATTERN = r"^[A-Z0-9][A-Z0-9_-]{0,31}$"


class AgencyBase(SQLModel):
    name: str = Field(min_length=1, max_length=300)
    name_en: str | None = Field(default=None, max_length=300)
    kind: AgencyKind
    parent: str | None = Field(default=None, max_length=32)
    note: str | None = Field(default=None, max_length=2000)


class Agency(AgencyBase, table=True):
    __tablename__ = "agency"

    code: str = Field(primary_key=True, max_length=32)
    kind: AgencyKind = Field(sa_type=enum_type(AgencyKind))
    spokesperson: dict[str, str] | None = Field(default=None, sa_column=json_column())


class AgencyCreate(AgencyBase):
    code: str = Field(schema_extra={"pattern": CODE_PATTERN, "examples": ["MOH"]})
    spokesperson: Spokesperson | None = None


class AgencyUpdate(AgencyBase):
    code: str | None = Field(default=None, schema_extra={"pattern": CODE_PATTERN})
    spokesperson: Spokesperson | None = None


class AgencyPublic(AgencyBase):
    code: str
    spokesperson: Spokesperson | None = None
