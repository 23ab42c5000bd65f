from pydicom.dataset import Dataset
from sqlalchemy import select
from engine.domain.worklist import MatchSettings, build_select, requested_keys, build_response
from engine.domain.tables import procedure_steps, orders
from .factories import apply_records, order, patient

def test_smoke(db, orders_handler):
    apply_records(db, orders_handler, [patient(), order(), order("PL2", scheduled_station_ae_title="CT1\\CT2")])
    print(db.read(lambda c: c.execute(select(orders)).all()))
    ds = Dataset()
    ds.PatientName = ""
    ds.AccessionNumber = ""
    sps = Dataset(); sps.ScheduledStationAETitle = "CT2"; sps.ScheduledProcedureStepStartDate = "20261122"; sps.Modality = ""
    ds.ScheduledProcedureStepSequence = [sps]
    rows = db.read(lambda c: c.execute(build_select(ds, MatchSettings())).mappings().all())
    keys = requested_keys(ds)
    for r in rows:
        print(build_response(r, keys, "ISO_IR 192"))
    assert len(rows) == 1
