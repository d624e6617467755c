# Parses run_grid.sh logs into the per-seed and mean tables of README.md: python3 summarize.py results/*.log
import re, sys, statistics as st
hdr = "policy,via,estimator,q_rif,probes_per_query,piggyback,failing_servers,cpu_work,servers,clients,load,completed,errors,mean_ms,p50_ms,p90_ms,p99_ms,p999_ms,client_cpu_us_per_req,client_peak_mb,server_cpu_us_per_req,server_peak_mb,probes_sent,probes_answered,probes_timed_out,probes_failed,probes_skipped".split(',')
rows = []
for path in sys.argv[1:]:
    cur = None; pw = None
    for line in open(path):
        line = line.rstrip('\n')
        m = re.match(r'== (\S+) seed=(\d+) failing=(\d+) (.*) \| (\S+)', line)
        if m:
            cur = dict(time=m[1], seed=int(m[2]), failing=int(m[3]), run=m[4].strip(), load1=float(m[5])); pw = None; continue
        if line.startswith('pickwise_probes'):
            pw = dict(kv.split('=') for kv in line.split()[1:]); continue
        if cur and ',direct,' in line:
            vals = line.split('  (')[0].split(',')
            d = dict(zip(hdr, vals)); d.update(cur)
            issued = 1350 * 23
            if cur['run'].startswith('--policy pickwise'):
                sent = int(pw['sent']) if pw else 0; issued = int(pw['picks']) if pw and int(pw['picks']) else issued
                d['tout'] = int(pw['timed_out']) if pw else 0
            else:
                sent = int(d['probes_sent']); d['tout'] = int(d['probes_timed_out'])
            d['ppr'] = sent / issued
            rows.append(d); cur = None
NAMES = {
    '--policy prequal --probes-per-query 0.5 --piggyback': 'prequal-rs prequal (0.5 probes/query + piggyback)',
    '--policy pickwise-prequal --probes-per-query 1 --removes-per-query 1 --q-rif 0.8408964 --piggyback': 'pickwise-prequal, pickwise defaults (1 probe/query, removes 1, q_rif 0.84) + piggyback',
    '--policy pickwise-prequal --probes-per-query 0.5 --piggyback --q-rif 0.84': 'pickwise-prequal (0.5 probes/query + piggyback, q_rif 0.84)',
    '--policy pickwise-prequal --probes-per-query 0.5 --piggyback --q-rif 0.84 --warmup-s 10': 'pickwise-prequal (0.5 probes/query + piggyback, q_rif 0.84), 10 s warm-up',
    '--policy pickwise-prequal --probes-per-query 1 --removes-per-query 1 --q-rif 0.8408964 --piggyback --warmup-s 10': 'pickwise-prequal, pickwise defaults + piggyback, 10 s warm-up',
}
def name(r):
    if r['run'] in NAMES: return NAMES[r['run']]
    return r['run'].replace('--policy ', '').replace(' --probes-per-query 0.5 --piggyback', ' (0.5 probes/query + piggyback)').replace('pickwise-prequal', 'pickwise-prequal').strip()
keys = []
for r in rows:
    k = (r['failing'], name(r))
    if k not in keys: keys.append(k)
print("| scenario | policy | seed | p50 / p99 / p99.9 ms | failed | client / server CPU µs per req | probes per req | probes timed out | load avg (1 min) |")
print("|---|---|---|---|---|---|---|---|---|")
for k in sorted(keys, key=lambda k: (k[0], keys.index(k))):
    rs = sorted([r for r in rows if (r['failing'], name(r)) == k], key=lambda r: r['seed'])
    for r in rs:
        print(f"| {'2 failing' if k[0] else 'normal'} | {k[1]} | {r['seed']} | {float(r['p50_ms']):.0f} / {float(r['p99_ms']):.0f} / {float(r['p999_ms']):.0f} | {int(r['errors']):,} | {float(r['client_cpu_us_per_req']):.0f} / {float(r['server_cpu_us_per_req']):.0f} | {r['ppr']:.2f} | {r['tout']:,} | {r['load1']:.1f} |")
print()
print("| scenario | policy | seeds | p50 / p99 / p99.9 ms (mean) | failed (mean) | client / server CPU µs per req | probes per req |")
print("|---|---|---|---|---|---|---|")
for k in sorted(keys, key=lambda k: (k[0], keys.index(k))):
    rs = [r for r in rows if (r['failing'], name(r)) == k]
    m = lambda f: st.mean(float(r[f]) for r in rs)
    print(f"| {'2 failing' if k[0] else 'normal'} | {k[1]} | {','.join(str(r['seed']) for r in sorted(rs,key=lambda r:r['seed']))} | {m('p50_ms'):.0f} / {m('p99_ms'):.0f} / {m('p999_ms'):.0f} | {m('errors'):,.0f} | {m('client_cpu_us_per_req'):.0f} / {m('server_cpu_us_per_req'):.0f} | {st.mean(r['ppr'] for r in rs):.2f} |")
