import subprocess,sys,re,collections
f=sys.argv[1]
out=subprocess.run(['perf','report','-i',f,'--no-children','--sort','dso,sym','--stdio','-g','none'],capture_output=True,text=True).stdout
cats=collections.Counter(); total=0
for l in out.splitlines():
    m=re.match(r'\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)',l)
    if not m: continue
    p=float(m.group(1)); dso=m.group(2); k=m.group(3); sym=m.group(4).strip()
    total+=p
    if k=='k': c='kernel'
    elif re.search(r'ring_core|^fe|fe4_|fe_|ecp_|x25519|sha256|sha512|aes|gcm|poly',sym): c='crypto (ring)'
    elif re.search(r'malloc|free|realloc|memmove|memset|memcpy|calloc',sym): c='libc alloc/copy'
    elif 'libc' in dso: c='libc other'
    elif re.search(r'rustls',sym): c='rustls (non-crypto)'
    elif re.search(r'tokio|mio',sym): c='tokio'
    elif re.search(r'metrics|hashbrown|tracing',sym): c='metrics/tracing/hash'
    else: c='other user: '+sym[:60]
    cats[c]+=p
main={k:v for k,v in cats.items() if not k.startswith('other user')}
for k,v in sorted(main.items(),key=lambda x:-x[1]): print(f"{v:6.1f}% {k}")
o=sum(v for k,v in cats.items() if k.startswith('other user')); print(f"{o:6.1f}% other user code")
for k,v in sorted(cats.items(),key=lambda x:-x[1]):
    if k.startswith('other user') and v>0.25: print(f"   {v:5.2f}% {k}")
print('total',total)
