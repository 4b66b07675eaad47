"""A short program on popular wheels (numpy, pandas, pydantic, Pillow, cryptography, regex,
orjson, msgpack, PyYAML, lxml): imports them all and uses each once, as a real program's
start-up and first request would. The benchmark's import-heavy workload; it leaks nothing."""
import json, io
import numpy as np
import pandas as pd
import pydantic
from PIL import Image
from cryptography.hazmat.primitives import hashes
import regex, orjson, msgpack, yaml
from lxml import etree

class User(pydantic.BaseModel):
    name: str
    age: int
    tags: list[str] = []

df = pd.DataFrame({"a": np.arange(1000), "b": np.random.rand(1000), "c": ["x%d" % i for i in range(1000)]})
g = df.groupby(df.a % 7).agg({"b": "mean"})
s = df.to_csv()
df2 = pd.read_csv(io.StringIO(s))
merged = df.merge(df2, on="a")
u = User(name="bob", age=3, tags=["a"])
d = u.model_dump_json()
User.model_validate_json(d)
img = Image.new("RGB", (64, 64), "red"); buf = io.BytesIO(); img.save(buf, "PNG")
h = hashes.Hash(hashes.SHA256()); h.update(b"abc"); h.finalize()
regex.findall(r"\p{L}+", "hello world")
orjson.loads(orjson.dumps({"a": [1, 2, 3]}))
msgpack.unpackb(msgpack.packb({"a": 1}))
yaml.safe_load(yaml.safe_dump({"a": [1, 2]}))
etree.fromstring(b"<a><b>x</b></a>").findall("b")
print(len(merged), round(float(g.b.sum()), 0) >= 0)
