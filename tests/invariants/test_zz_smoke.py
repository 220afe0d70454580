from tests.chatwoot_fixtures import *  # noqa
from tests.chatwoot_fixtures import SMALL, MULTI, TINY, LONG_ID, published_doc_ids, doc_id
import time

def test_smoke(kb, fake):
    t = time.time()
    r = kb.reconcile()
    print(r, time.time() - t)
    assert kb.doc_ids() == published_doc_ids(fake, SMALL)
    print(len(kb.chunks(doc_id(SMALL, LONG_ID))))
    print(len(fake.requests), [ (r.path[-20:], r.query) for r in fake.requests])
    fake.clear_requests()
    r = kb.poll(); print(r.requests, r)
    print(fake.requests)
    print(fake.published_ids(MULTI, 'fr'), fake.published_ids(MULTI, 'es'), fake.all_articles(MULTI)[0]['locale'])
