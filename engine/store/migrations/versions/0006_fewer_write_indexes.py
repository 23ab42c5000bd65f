"""fewer indexes written per order: placer/filler numbers, SPS ID, one station AE index

Every index costs each new order a B-tree insert and, on SQLite, a WAL page at
commit. Placer and filler order numbers and the SPS ID are optional worklist
keys that no lookup depends on (MPPS finds its steps by study and accession);
they are matched among the rows the other keys select. The
two station AE indexes become one that covers the step pk.

One index is added, on a table written only by A40/A47: patient_merges by
prior identity, so HL7 for an id replaced by A47 follows the merged-id policy.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 12:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index('ix_orders_placer_order_number', table_name='orders')
    op.drop_index('ix_orders_filler_order_number', table_name='orders')
    op.drop_index('ix_procedure_steps_sps_id', table_name='procedure_steps')
    op.create_index('ix_step_station_aes_ae_title_start_datetime_step_pk', 'step_station_aes',
                    ['ae_title', 'start_datetime', 'step_pk'], unique=False)
    op.drop_index('ix_step_station_aes_ae_title_start_datetime', table_name='step_station_aes')
    op.drop_index('ix_step_station_aes_ae_title_step_pk', table_name='step_station_aes')
    op.create_index('ix_patient_merges_prior_patient_id_prior_issuer', 'patient_merges',
                    ['prior_patient_id', 'prior_issuer'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_patient_merges_prior_patient_id_prior_issuer', table_name='patient_merges')
    op.create_index('ix_step_station_aes_ae_title_step_pk', 'step_station_aes', ['ae_title', 'step_pk'], unique=False)
    op.create_index('ix_step_station_aes_ae_title_start_datetime', 'step_station_aes',
                    ['ae_title', 'start_datetime'], unique=False)
    op.drop_index('ix_step_station_aes_ae_title_start_datetime_step_pk', table_name='step_station_aes')
    op.create_index('ix_procedure_steps_sps_id', 'procedure_steps', ['sps_id'], unique=False)
    op.create_index('ix_orders_filler_order_number', 'orders', ['filler_order_number'], unique=False)
    op.create_index('ix_orders_placer_order_number', 'orders', ['placer_order_number'], unique=False)
