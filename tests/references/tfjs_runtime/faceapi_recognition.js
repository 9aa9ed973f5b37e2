// face-api's own faceRecognitionNet (the package's dist/face-api.node-wasm.js, which takes
// its tf from the @tensorflow/tfjs installed here; run on the pure-JS CPU backend): the
// reference runtime for the dlib_resnet_faceapi conversion. Usage:
//   NODE_PATH=<this dir>/node_modules node faceapi_recognition.js FACEAPI_DIR OUT_DIR \
//       [--input input.f32 N] [--cotangent cotangent.f32] [--weights]
// FACEAPI_DIR holds face-api.node-wasm.js and face_recognition_model-weights_manifest.json
// + .bin, loaded with face-api's loadFromDisk. Writes to OUT_DIR:
//   descriptors.f32  [N, 128] computeFaceDescriptor of N 150x150 RGB chips (float32 NHWC)
//   grad.f32         [N, 150, 150, 3] d/dx sum(forwardInput(x) * cotangent), tf.grad through
//                    face-api's forward pass (cotangent [N, 128])
//   weights.json + weights.f32   the loaded weights (face-api name, shape, offset), as the
//                    network holds them after tf.io's dequantisation
const fs = require('fs');
const path = require('path');
const { readF32 } = require('./load_model');

function parseArgs(argv) {
  const [faceapiDir, outDir, ...rest] = argv;
  const args = { faceapiDir, outDir, input: null, count: 0, cotangent: null, weights: false };
  for (let i = 0; i < rest.length; i += 1) {
    if (rest[i] === '--input') { args.input = rest[i + 1]; args.count = parseInt(rest[i + 2], 10); i += 2; }
    else if (rest[i] === '--cotangent') { args.cotangent = rest[i + 1]; i += 1; }
    else if (rest[i] === '--weights') args.weights = true;
    else throw new Error(`unknown argument ${rest[i]}`);
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const faceapi = require(path.resolve(args.faceapiDir, 'face-api.node-wasm.js'));
  const { tf } = faceapi;
  if (tf.engine() !== require('@tensorflow/tfjs').engine()) {
    throw new Error('face-api did not load the @tensorflow/tfjs of this harness');
  }
  await tf.setBackend('cpu');
  await tf.ready();
  if (tf.getBackend() !== 'cpu') throw new Error(`backend ${tf.getBackend()}, expected cpu`);
  const net = faceapi.nets.faceRecognitionNet;
  await net.loadFromDisk(path.resolve(args.faceapiDir));
  fs.writeFileSync(path.join(args.outDir, 'backend.txt'), `${tf.getBackend()} tfjs ${tf.version_core}`);

  if (args.weights) {
    const index = [];
    const parts = [];
    let offset = 0;
    for (const { originalPath, paramPath } of net.paramMappings) {
      const t = net.getParamFromPath(paramPath);
      index.push({ name: originalPath, shape: t.shape, offset });
      parts.push(Buffer.from(t.dataSync().slice().buffer));
      offset += t.size;
    }
    fs.writeFileSync(path.join(args.outDir, 'weights.json'), JSON.stringify(index));
    fs.writeFileSync(path.join(args.outDir, 'weights.f32'), Buffer.concat(parts));
  }
  if (!args.input) return;

  const n = args.count;
  const x = tf.tensor4d(readF32(args.input), [n, 150, 150, 3], 'float32');
  // A list of Tensor3D is face-api's batch input (batch mode also for N = 1).
  const descriptors = await net.computeFaceDescriptor(new faceapi.NetInput(tf.unstack(x), true));
  const flat = new Float32Array(n * 128);
  descriptors.forEach((d, i) => flat.set(d, i * 128));
  fs.writeFileSync(path.join(args.outDir, 'descriptors.f32'), Buffer.from(flat.buffer));

  if (args.cotangent) {
    const cot = tf.tensor2d(readF32(args.cotangent), [n, 128], 'float32');
    const f = (input) => tf.sum(tf.mul(net.forwardInput(new faceapi.NetInput(tf.unstack(input), true)), cot));
    const grad = tf.grad(f)(x);
    fs.writeFileSync(path.join(args.outDir, 'grad.f32'), Buffer.from(grad.dataSync().buffer));
  }
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
