// Reads a GGUF file with @huggingface/gguf (an independent parser) and prints its header as JSON.
import { gguf } from "@huggingface/gguf";
const file = process.argv[2];
const { metadata, tensorInfos } = await gguf(file, { allowLocalFile: true });
const plain = JSON.parse(JSON.stringify(metadata, (_, v) => (typeof v === "bigint" ? Number(v) : v)));
console.log(JSON.stringify({
  metadata: plain,
  tensors: tensorInfos.map(t => ({ name: t.name, shape: t.shape.map(Number), dtype: t.dtype, offset: Number(t.offset) })),
}));
