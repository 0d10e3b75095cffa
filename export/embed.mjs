// Device-side example: embed sentences with an exported compress bundle in JavaScript (Node; in a browser, fetch
// the three files instead of reading them),
// onnxruntime-web (wasm) running the graph and transformers.js reading the bundle's tokenizer.json.
//
//   npm install --ignore-scripts onnxruntime-web @huggingface/transformers
//   node embed.mjs BUNDLE_DIR "first sentence" "second sentence"
//
// It follows compress.json as embed.py does: the graph's file (`model`), its output name, max_length. Pooling and
// normalisation are inside the graph: the vectors come out ready to compare.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as ort from 'onnxruntime-web';
import { AutoTokenizer } from '@huggingface/transformers';

export async function embed(bundle, texts) {
  const info = JSON.parse(readFileSync(join(bundle, 'compress.json'), 'utf8'));
  const tokenizer = await AutoTokenizer.from_pretrained(bundle);
  const session = await ort.InferenceSession.create(readFileSync(join(bundle, info.model ?? 'model.onnx')));
  const encoded = tokenizer(texts, { padding: true, truncation: true, max_length: info.max_length ?? 128 });
  const feeds = {};
  for (const name of session.inputNames) {
    feeds[name] = new ort.Tensor('int64', encoded[name].data, encoded[name].dims);
  }
  const output = (await session.run(feeds))[info.output];
  const [rows, width] = output.dims;
  return Array.from({ length: rows }, (_, i) => Array.from(output.data.subarray(i * width, (i + 1) * width)));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [bundle, ...texts] = process.argv.slice(2);
  console.log(JSON.stringify(await embed(bundle, texts)));
}
