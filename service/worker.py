"""One serving worker's parts, wired together: the database's health and the request
pool, the snapshot keeper, the reference checks of request validation, the scoring
service and the read views. The Bento builds one per worker; the tests build their
own on a database and clock of their choice."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from service.database import DatabaseHealth, RequestPool
from service.logic import RiskService
from service.lookup import SnapshotKeeper
from service.model_input import ModelInputBuilder
from service.reads import ReadViews
from service.recorder import PredictionRecorder
from service.references import ReferenceData, StudentRecords
from service.served_model import ServedModel


@dataclass(frozen=True)
class Worker:
    """A worker's parts; `start` runs the snapshot thread, `stop` ends it and closes
    every connection."""

    database: DatabaseHealth
    pool: RequestPool
    keeper: SnapshotKeeper
    references: ReferenceData
    logic: RiskService
    reads: ReadViews

    def start(self) -> None:
        self.keeper.start()

    def stop(self) -> None:
        self.keeper.stop()
        self.pool.close()
        self.database.close()


def assemble(
    model: ServedModel,
    resolve_url: Callable[[], str],
    clock: Callable[[], datetime],
    hide_record_reasons: bool = False,
) -> Worker:
    """The parts of a worker serving `model` from the database at `resolve_url()`."""
    database = DatabaseHealth(resolve_url)
    pool = RequestPool(database)
    database.located.append(pool.open)
    database.recovered.append(pool.renew)
    keeper = SnapshotKeeper(database, clock)
    records = StudentRecords(keeper, pool)
    logic = RiskService(
        model=model,
        keeper=keeper,
        database=database,
        inputs=ModelInputBuilder(records),
        recorder=PredictionRecorder(pool, model.threshold),
        clock=clock,
        hide_record_reasons=hide_record_reasons,
    )
    return Worker(
        database=database,
        pool=pool,
        keeper=keeper,
        references=ReferenceData(keeper, records, clock),
        logic=logic,
        reads=ReadViews(model, keeper, pool, clock),
    )
