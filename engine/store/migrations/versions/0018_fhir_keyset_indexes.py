"""FHIR paging and history indexes: token index ordered by resource, versions by time

``fhir_tokens``: the index (param, code, system, resource_pk) becomes (param, code,
resource_pk, system). A token search without a system (``modality=CT``) fixes param and
code only; with the resource key right after them, the index yields the matches in key
order, so a page after a cursor starts at the cursor (no scan of every earlier match, no
sort) and checking one candidate resource is one seek. A search with a system still
filters it inside the index. ``fhir_versions``: an index on (last_updated, resource_pk,
version_id) serves type- and system-level ``_history`` newest first, with ``_since``.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 00:05:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index(op.f('ix_fhir_tokens_param_code_system_resource_pk'), table_name='fhir_tokens')
    op.create_index(op.f('ix_fhir_tokens_param_code_resource_pk_system'), 'fhir_tokens',
                    ['param', 'code', 'resource_pk', 'system'])
    op.create_index(op.f('ix_fhir_versions_last_updated_resource_pk_version_id'), 'fhir_versions',
                    ['last_updated', 'resource_pk', 'version_id'])


def downgrade() -> None:
    op.drop_index(op.f('ix_fhir_versions_last_updated_resource_pk_version_id'), table_name='fhir_versions')
    op.drop_index(op.f('ix_fhir_tokens_param_code_resource_pk_system'), table_name='fhir_tokens')
    op.create_index(op.f('ix_fhir_tokens_param_code_system_resource_pk'), 'fhir_tokens',
                    ['param', 'code', 'system', 'resource_pk'])
