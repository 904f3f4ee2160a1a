import json, time
from llqa.models import load_model
from evals.harness import GenerationOptions, run_task
from evals.ruler import RulerConfig, RulerTask
loaded = load_model('smollm2-135m', dtype='float32', device='cpu')
t = time.time()
cfg = RulerConfig(tasks=["niah_single_1", "niah_single_2", "vt", "fwe"], lengths=[1024], samples=3, seed=0,
                  haystack='/work/shared/data/paul_graham_essays/PaulGrahamEssays')
for tmpl in ('none', 'auto'):
    r = run_task(loaded, RulerTask(cfg), GenerationOptions(chat_template=tmpl), f'/tmp/sm_ruler_{tmpl}', progress=False, ctx=1024, overwrite=True)
    print(tmpl, json.dumps(r.summary['by_task_length']), time.time() - t)
    for line in open(f'/tmp/sm_ruler_{tmpl}/cells.jsonl'):
        c = json.loads(line); print('  ', c['ruler_task'], c['references'], repr(c['output'][:120]))
