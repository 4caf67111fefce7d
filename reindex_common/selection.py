"""The selection of SPEC §2 as SQL: which scorecards a job copies, with their template's type.

The producer pages it, ``reindex verify`` and the benchmarks read it, and the tests check against
it: one text, so that they cannot drift apart. Parameters: ``start``, ``end`` (timestamptz) and
``types`` (text[]).
"""

from __future__ import annotations

# The scorecard columns in SPEC §3 order, as far as Postgres has them (type and title from the
# template revision); the consumer adds the job columns.
SCORECARD_FIELDS = """
s.customer_id, s.profile_id, s.scorecard_id, s.template_id, s.template_revision,
r.type, r.title, s.conversation_id, s.agent_user_id, s.creator_user_id, s.score,
s.submitted_at, s.created_at, s.updated_at
"""

# Index of created_at among SCORECARD_FIELDS.
CREATED_AT = 12

SELECTION = """
FROM director.scorecards s
JOIN director.scorecard_template_revisions r
  ON r.customer_id = s.customer_id AND r.profile_id = s.profile_id
 AND r.template_id = s.template_id AND r.revision = s.template_revision
WHERE s.created_at >= %(start)s AND s.created_at < %(end)s AND r.type = ANY(%(types)s)
"""
