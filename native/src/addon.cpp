// addon.cpp — the N-API surface of the engine (see sidecar/native.ts for its TypeScript types).
// Heavy calls run on their own thread and resolve a Promise; progress and tokens stream back
// through a thread-safe function whose finalizer settles the Promise, so every streamed event
// reaches JS before the result. C++ exceptions become JS Errors here and nowhere else.
#include <napi.h>

#include <memory>
#include <thread>

#include "backend.h"
#include "kernels.h"
#include "model.h"
#include "quant.h"
#include "session.h"

using namespace lkv;

namespace {

// Runs work(emit) on a new thread. emit(fn) schedules fn(env, callback) on the JS thread.
// The promise resolves with make_result(env) after every emitted event has run.
struct AsyncJob {
  using JsCall = std::function<void(Napi::Env, Napi::Function)>;
  using Emit = std::function<void(JsCall)>;
  Napi::Promise::Deferred deferred;
  Napi::ThreadSafeFunction tsfn;
  std::thread thread;
  std::string error;
  std::function<Napi::Value(Napi::Env)> make_result;
  explicit AsyncJob(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

Napi::Value run_async(Napi::Env env, Napi::Value callback, const char* name,
                      std::function<std::function<Napi::Value(Napi::Env)>(const AsyncJob::Emit&)> work) {
  auto job = std::make_shared<AsyncJob>(env);
  Napi::Function cb = callback.IsFunction() ? callback.As<Napi::Function>()
                                            : Napi::Function::New(env, [](const Napi::CallbackInfo&) {});
  job->tsfn = Napi::ThreadSafeFunction::New(env, cb, name, 0, 1, [job](Napi::Env env) {
    if (job->thread.joinable()) job->thread.join();
    if (!job->error.empty()) {
      job->deferred.Reject(Napi::Error::New(env, job->error).Value());
      return;
    }
    try {
      job->deferred.Resolve(job->make_result ? job->make_result(env) : env.Undefined());
    } catch (const Napi::Error& e) {
      job->deferred.Reject(e.Value());
    } catch (const std::exception& e) {
      job->deferred.Reject(Napi::Error::New(env, e.what()).Value());
    }
  });
  job->thread = std::thread([job, work]() {
    AsyncJob::Emit emit = [job](AsyncJob::JsCall fn) {
      auto* heap = new AsyncJob::JsCall(std::move(fn));
      napi_status st = job->tsfn.BlockingCall(heap, [](Napi::Env env, Napi::Function jsCb, AsyncJob::JsCall* f) {
        try {
          (*f)(env, jsCb);
        } catch (...) {
        }
        delete f;
      });
      if (st != napi_ok) delete heap;
    };
    try {
      job->make_result = work(emit);
    } catch (const std::exception& e) {
      job->error = e.what();
      if (job->error.empty()) job->error = "unknown engine error";
    } catch (...) {
      job->error = "unknown engine error";
    }
    job->tsfn.Release();
  });
  return job->deferred.Promise();
}

std::string type_from_name(const std::string& s, uint32_t* out) {
  static const std::pair<const char*, GgmlType> names[] = {
      {"f32", GgmlType::F32},  {"f16", GgmlType::F16},  {"bf16", GgmlType::BF16}, {"q8_0", GgmlType::Q8_0},
      {"q4_0", GgmlType::Q4_0}, {"q2_k", GgmlType::Q2_K}, {"q2_K", GgmlType::Q2_K}, {"q3_k", GgmlType::Q3_K}, {"q3_K", GgmlType::Q3_K}, {"q4_k", GgmlType::Q4_K},
      {"q4_K", GgmlType::Q4_K}, {"q5_k", GgmlType::Q5_K}, {"q5_K", GgmlType::Q5_K}, {"q6_k", GgmlType::Q6_K},
      {"q6_K", GgmlType::Q6_K}, {"iq4_nl", GgmlType::IQ4_NL}, {"iq4_xs", GgmlType::IQ4_XS}};
  for (auto& n : names)
    if (s == n.first) {
      *out = (uint32_t)n.second;
      return "";
    }
  return "unknown tensor type '" + s + "' (f32, f16, bf16, q8_0, q4_0, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs)";
}

Napi::Object kv_stats_object(Napi::Env env, const KvStats& st) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("tokens", (double)st.tokens);
  o.Set("residentTokens", st.resident_tokens);
  o.Set("bytes", (double)st.bytes);
  o.Set("f16Bytes", (double)st.f16_bytes);
  o.Set("spec", st.spec);
  Napi::Array per = Napi::Array::New(env, st.per_layer.size());
  for (size_t i = 0; i < st.per_layer.size(); i++) per.Set((uint32_t)i, (double)st.per_layer[i]);
  o.Set("perLayer", per);
  Napi::Object parts = Napi::Object::New(env);  // where the bytes go (compressed caches)
  parts.Set("codes", (double)st.code_bytes);
  parts.Set("scales", (double)st.param_bytes);
  parts.Set("outliers", (double)st.outlier_bytes);
  parts.Set("residual", (double)st.residual_bytes);
  parts.Set("index", (double)st.index_bytes);
  parts.Set("journal", (double)st.journal_bytes);
  o.Set("breakdown", parts);
  o.Set("residualTokens", st.residual_tokens);
  o.Set("evictedTokens", st.evicted_tokens);
  Napi::Array tiers = Napi::Array::New(env, st.tier_tokens.size());
  for (size_t i = 0; i < st.tier_tokens.size(); i++) tiers.Set((uint32_t)i, st.tier_tokens[i]);
  o.Set("tierTokens", tiers);
  if (st.streaming_heads >= 0) o.Set("streamingHeads", st.streaming_heads);
  return o;
}

// ---- Session ----------------------------------------------------------------------------------

class SessionWrap : public Napi::ObjectWrap<SessionWrap> {
 public:
  static Napi::FunctionReference ctor;
  static void Init(Napi::Env env) {
    Napi::Function f = DefineClass(env, "Session",
                                   {InstanceMethod("eval", &SessionWrap::Eval), InstanceMethod("generate", &SessionWrap::Generate),
                                    InstanceMethod("cancel", &SessionWrap::Cancel), InstanceMethod("nTokens", &SessionWrap::NTokens),
                                    InstanceMethod("nCtx", &SessionWrap::NCtx), InstanceMethod("tokens", &SessionWrap::Tokens),
                                    InstanceMethod("truncate", &SessionWrap::Truncate), InstanceMethod("logits", &SessionWrap::Logits),
                                    InstanceMethod("kvStats", &SessionWrap::KvStatsJs),
                                    InstanceMethod("saveState", &SessionWrap::SaveState),
                                    InstanceMethod("loadState", &SessionWrap::LoadState),
                                    InstanceMethod("backend", &SessionWrap::Backend),
                                    InstanceMethod("backendNote", &SessionWrap::BackendNote),
                                    InstanceMethod("dispose", &SessionWrap::Dispose)});
    ctor = Napi::Persistent(f);
  }
  explicit SessionWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SessionWrap>(info) {}
  std::shared_ptr<Session> session;
  std::shared_ptr<std::atomic<bool>> busy = std::make_shared<std::atomic<bool>>(false);

 private:
  Session& live(Napi::Env env) {
    if (!session) throw Napi::Error::New(env, "session is disposed");
    return *session;
  }
  // Marks the session busy for the duration of an async job.
  void enter(Napi::Env env) {
    live(env);
    bool expected = false;
    if (!busy->compare_exchange_strong(expected, true))
      throw Napi::Error::New(env, "session is busy (one prefill or generation at a time)");
    session->reset_cancel();
  }
  void check_idle(Napi::Env env) {
    live(env);
    if (busy->load()) throw Napi::Error::New(env, "session is busy (one prefill or generation at a time)");
  }

  Napi::Value Eval(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw Napi::TypeError::New(env, "eval(tokens: Int32Array, wantLogits, onProgress?)");
    Napi::Int32Array arr = info[0].As<Napi::Int32Array>();
    std::vector<int32_t> toks(arr.Data(), arr.Data() + arr.ElementLength());
    const bool want = info[1].ToBoolean();
    enter(env);
    auto s = session;
    auto busy_flag = busy;
    return run_async(env, info[2], "llamakv.eval", [s, toks, want, busy_flag](const AsyncJob::Emit& emit) {
      struct Release { std::shared_ptr<std::atomic<bool>> b; ~Release() { b->store(false); } } rel{busy_flag};
      s->eval(toks, want, [&](int done, int total) {
        emit([done, total](Napi::Env env, Napi::Function cb) { cb.Call({Napi::Number::New(env, done), Napi::Number::New(env, total)}); });
      });
      std::vector<float> out;
      if (want && s->logits()) out = *s->logits();
      return std::function<Napi::Value(Napi::Env)>([out, want](Napi::Env env) -> Napi::Value {
        if (!want) return env.Null();
        Napi::Float32Array a = Napi::Float32Array::New(env, out.size());
        std::copy(out.begin(), out.end(), a.Data());
        return a;
      });
    });
  }

  Napi::Value Generate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "generate(options, onToken)");
    Napi::Object o = info[0].As<Napi::Object>();
    auto num = [&](const char* k, double d) { return o.Has(k) && o.Get(k).IsNumber() ? o.Get(k).As<Napi::Number>().DoubleValue() : d; };
    SamplingParams sp;
    sp.temperature = (float)num("temperature", 0);
    sp.top_k = (int)num("topK", 40);
    sp.top_p = (float)num("topP", 0.95);
    sp.min_p = (float)num("minP", 0.05);
    sp.repeat_penalty = (float)num("repeatPenalty", 1.0);
    sp.repeat_last_n = (int)num("repeatLastN", 64);
    sp.seed = (uint64_t)num("seed", 0xc0ffee);
    const int max_tokens = (int)num("maxTokens", 256);
    try {
      Sampler check(sp);  // validate parameters on the JS thread
    } catch (const Error& e) {
      throw Napi::RangeError::New(env, e.what());
    }
    enter(env);
    auto s = session;
    auto busy_flag = busy;
    return run_async(env, info[1], "llamakv.generate", [s, sp, max_tokens, busy_flag](const AsyncJob::Emit& emit) {
      struct Release { std::shared_ptr<std::atomic<bool>> b; ~Release() { b->store(false); } } rel{busy_flag};
      GenerateResult r = s->generate(sp, max_tokens, [&](int32_t tok) {
        emit([tok](Napi::Env env, Napi::Function cb) { cb.Call({Napi::Number::New(env, tok)}); });
      });
      return std::function<Napi::Value(Napi::Env)>([r](Napi::Env env) -> Napi::Value {
        Napi::Object res = Napi::Object::New(env);
        res.Set("tokens", r.tokens);
        res.Set("reason", r.reason);
        res.Set("decodeMs", r.decode_ms);
        return res;
      });
    });
  }

  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    if (session) session->cancel();
    return info.Env().Undefined();
  }
  Napi::Value NTokens(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), live(info.Env()).n_tokens()); }
  Napi::Value NCtx(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), live(info.Env()).n_ctx()); }
  Napi::Value Tokens(const Napi::CallbackInfo& info) {
    check_idle(info.Env());
    const auto& t = session->tokens();
    Napi::Int32Array a = Napi::Int32Array::New(info.Env(), t.size());
    std::copy(t.begin(), t.end(), a.Data());
    return a;
  }
  Napi::Value Truncate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    check_idle(env);
    if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "truncate(n: number)");
    try {
      session->truncate(info[0].As<Napi::Number>().Int32Value());
    } catch (const Error& e) {
      throw Napi::RangeError::New(env, e.what());
    }
    return env.Undefined();
  }
  Napi::Value Logits(const Napi::CallbackInfo& info) {
    check_idle(info.Env());
    const std::vector<float>* l = session->logits();
    if (!l) return info.Env().Null();
    Napi::Float32Array a = Napi::Float32Array::New(info.Env(), l->size());
    std::copy(l->begin(), l->end(), a.Data());
    return a;
  }
  Napi::Value KvStatsJs(const Napi::CallbackInfo& info) { return kv_stats_object(info.Env(), live(info.Env()).kv_stats()); }
  // "cpu" or "cuda"; the note says why a session of a CUDA model runs on the CPU ("" otherwise).
  Napi::Value Backend(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), live(info.Env()).backend()); }
  Napi::Value BackendNote(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), live(info.Env()).backend_note()); }

  Napi::Value SaveState(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsString()) throw Napi::TypeError::New(env, "saveState(path: string, meta: string)");
    std::string path = info[0].As<Napi::String>();
    std::string meta = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : std::string();
    enter(env);
    auto s = session;
    auto busy_flag = busy;
    return run_async(env, env.Undefined(), "llamakv.save", [s, path, meta, busy_flag](const AsyncJob::Emit&) {
      struct Release { std::shared_ptr<std::atomic<bool>> b; ~Release() { b->store(false); } } rel{busy_flag};
      s->save(path, meta);
      return std::function<Napi::Value(Napi::Env)>([](Napi::Env env) -> Napi::Value { return env.Undefined(); });
    });
  }

  Napi::Value LoadState(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsString()) throw Napi::TypeError::New(env, "loadState(path: string)");
    std::string path = info[0].As<Napi::String>();
    enter(env);
    auto s = session;
    auto busy_flag = busy;
    return run_async(env, env.Undefined(), "llamakv.load", [s, path, busy_flag](const AsyncJob::Emit&) {
      struct Release { std::shared_ptr<std::atomic<bool>> b; ~Release() { b->store(false); } } rel{busy_flag};
      std::string meta = s->load(path);
      return std::function<Napi::Value(Napi::Env)>([meta](Napi::Env env) -> Napi::Value { return Napi::String::New(env, meta); });
    });
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    if (session) {
      session->cancel();
      session.reset();  // running jobs hold their own reference
    }
    return info.Env().Undefined();
  }
};
Napi::FunctionReference SessionWrap::ctor;

// ---- Model ------------------------------------------------------------------------------------

class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
 public:
  static Napi::FunctionReference ctor;
  static void Init(Napi::Env env) {
    Napi::Function f = DefineClass(env, "Model",
                                   {InstanceMethod("info", &ModelWrap::Info), InstanceMethod("tokenize", &ModelWrap::Tokenize),
                                    InstanceMethod("tokenBytes", &ModelWrap::TokenBytes),
                                    InstanceMethod("createSession", &ModelWrap::CreateSession),
                                    InstanceMethod("dispose", &ModelWrap::Dispose)});
    ctor = Napi::Persistent(f);
  }
  explicit ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap>(info) {}
  std::shared_ptr<const Model> model;
  std::shared_ptr<Engine> engine;
  std::string path;
  BackendChoice backend;  // name, device, and why "auto" chose the CPU

 private:
  const Model& live(Napi::Env env) {
    if (!model) throw Napi::Error::New(env, "model is disposed");
    return *model;
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Model& m = live(env);
    const LlamaConfig& c = m.cfg;
    Napi::Object o = Napi::Object::New(env);
    o.Set("path", path);
    o.Set("name", c.name);
    o.Set("architecture", "llama");
    o.Set("nLayer", c.n_layer);
    o.Set("nEmbd", c.n_embd);
    o.Set("nHead", c.n_head);
    o.Set("nHeadKv", c.n_head_kv);
    o.Set("headDim", c.head_dim);
    o.Set("nFf", c.n_ff);
    o.Set("nVocab", c.n_vocab);
    o.Set("contextLength", c.n_ctx_train);
    o.Set("ropeFreqBase", c.rope_base);
    o.Set("ropeScaling", c.rope_scaling);
    o.Set("tiedOutput", c.tied_output);
    o.Set("rmsEps", c.rms_eps);
    o.Set("fileBytes", (double)m.file->size());
    o.Set("weightType", m.weight_type);
    Napi::Object types = Napi::Object::New(env);
    for (auto& tc : m.type_counts) types.Set(tc.first, tc.second);
    o.Set("tensorTypes", types);
    if (m.chat_template.empty()) o.Set("chatTemplate", env.Null());
    else o.Set("chatTemplate", m.chat_template);
    o.Set("bos", m.tokenizer->bos());
    o.Set("eos", m.tokenizer->eos());
    o.Set("eot", m.tokenizer->eot());
    o.Set("addBos", m.tokenizer->add_bos_default());
    o.Set("kernels", engine->kernels->name);
    o.Set("threads", engine->pool->size());
    o.Set("backend", backend.name);
    o.Set("device", backend.device);
    if (!backend.note.empty()) o.Set("backendNote", backend.note);
    return o;
  }

  Napi::Value Tokenize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Model& m = live(env);
    if (!info[0].IsString()) throw Napi::TypeError::New(env, "tokenize(text: string, addBos: boolean, parseSpecial: boolean)");
    std::string text = info[0].As<Napi::String>();
    std::vector<int32_t> ids;
    try {
      ids = m.tokenizer->encode(text, info[1].ToBoolean(), info[2].ToBoolean());
    } catch (const std::exception& e) {
      throw Napi::Error::New(env, e.what());
    }
    Napi::Int32Array a = Napi::Int32Array::New(env, ids.size());
    std::copy(ids.begin(), ids.end(), a.Data());
    return a;
  }

  Napi::Value TokenBytes(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const Model& m = live(env);
    if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "tokenBytes(id: number, special: boolean)");
    const int64_t id = info[0].As<Napi::Number>().Int64Value();
    if (id < 0 || id >= m.cfg.n_vocab) throw Napi::RangeError::New(env, "token id " + std::to_string(id) + " is out of range");
    std::string b = m.tokenizer->token_bytes((int32_t)id, info[1].ToBoolean());
    return Napi::Buffer<char>::Copy(env, b.data(), b.size());
  }

  Napi::Value CreateSession(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    live(env);
    Napi::Object o = info[0].IsObject() ? info[0].As<Napi::Object>() : Napi::Object::New(env);
    int n_ctx = o.Has("nCtx") && o.Get("nCtx").IsNumber() ? o.Get("nCtx").As<Napi::Number>().Int32Value() : 4096;
    std::string spec = o.Has("kv") && o.Get("kv").IsString() ? o.Get("kv").As<Napi::String>().Utf8Value() : "f16";
    Napi::Object js = SessionWrap::ctor.New({});
    SessionWrap* w = SessionWrap::Unwrap(js);
    try {
      w->session = std::make_shared<Session>(model, engine, n_ctx, spec);
    } catch (const std::exception& e) {
      throw Napi::Error::New(env, e.what());
    }
    return js;
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    model.reset();  // sessions keep the mapping (and the device weights) alive until they are gone
    engine.reset();
    backend.cuda.reset();
    return info.Env().Undefined();
  }
};
Napi::FunctionReference ModelWrap::ctor;

// ---- module functions ---------------------------------------------------------------------------

Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "loadModel(path: string, options?, onProgress?)");
  std::string path = info[0].As<Napi::String>();
  int threads = 0;
  std::string backend = "auto";
  if (info[1].IsObject()) {
    Napi::Object o = info[1].As<Napi::Object>();
    if (o.Has("threads") && o.Get("threads").IsNumber()) threads = o.Get("threads").As<Napi::Number>().Int32Value();
    if (o.Has("backend") && !o.Get("backend").IsUndefined()) {
      if (!o.Get("backend").IsString()) throw Napi::TypeError::New(env, "loadModel: options.backend must be 'auto', 'cpu' or 'cuda'");
      backend = o.Get("backend").As<Napi::String>().Utf8Value();
    }
  }
  try {
    check_backend_name(backend);
  } catch (const Error& e) {
    throw Napi::Error::New(env, e.what());
  }
  return run_async(env, info[2], "llamakv.load", [path, threads, backend](const AsyncJob::Emit& emit) {
    std::shared_ptr<const Model> model(Model::load(path, [&](double f) {
      emit([f](Napi::Env env, Napi::Function cb) { cb.Call({Napi::Number::New(env, f)}); });
    }));
    BackendChoice choice = choose_backend(*model, backend);  // throws for "cuda" when unusable
    auto engine = std::make_shared<Engine>(threads);
    engine->cuda = choice.cuda;
    engine->cuda_required = choice.required;
    return std::function<Napi::Value(Napi::Env)>([model, engine, path, choice](Napi::Env env) -> Napi::Value {
      Napi::Object js = ModelWrap::ctor.New({});
      ModelWrap* w = ModelWrap::Unwrap(js);
      w->model = model;
      w->engine = engine;
      w->path = path;
      w->backend = choice;
      return js;
    });
  });
}

Napi::Value Quantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw Napi::TypeError::New(env, "quantize(type: string, values: Float32Array)");
  uint32_t type = 0;
  std::string err = type_from_name(info[0].As<Napi::String>(), &type);
  if (!err.empty()) throw Napi::Error::New(env, err);
  Napi::Float32Array v = info[1].As<Napi::Float32Array>();
  try {
    const uint64_t bytes = ggml_row_bytes(type, v.ElementLength());
    Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, bytes);
    quantize_row_ref(type, v.Data(), out.Data(), (int64_t)v.ElementLength());
    return out;
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

Napi::Value Dequantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsBuffer() || !info[2].IsNumber())
    throw Napi::TypeError::New(env, "dequantize(type: string, data: Buffer, n: number)");
  uint32_t type = 0;
  std::string err = type_from_name(info[0].As<Napi::String>(), &type);
  if (!err.empty()) throw Napi::Error::New(env, err);
  Napi::Buffer<uint8_t> b = info[1].As<Napi::Buffer<uint8_t>>();
  const int64_t n = info[2].As<Napi::Number>().Int64Value();
  try {
    LKV_CHECK(n >= 0 && ggml_row_bytes(type, (uint64_t)n) <= b.Length(), "dequantize: buffer too small for %lld values", (long long)n);
    Napi::Float32Array out = Napi::Float32Array::New(env, (size_t)n);
    dequantize_row_ref(type, b.Data(), out.Data(), n);
    return out;
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

Napi::Value SystemInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("cpu", cpu_features());
  o.Set("kernels", kernels_best().name);
  CudaInfo ci = cuda_info();
  o.Set("cuda", ci.message);
  o.Set("cudaCompiled", ci.compiled);
  o.Set("cudaAvailable", ci.available);
  o.Set("threads", (double)std::thread::hardware_concurrency());
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  SessionWrap::Init(env);
  ModelWrap::Init(env);
  exports.Set("loadModel", Napi::Function::New(env, LoadModel));
  exports.Set("quantize", Napi::Function::New(env, Quantize));
  exports.Set("dequantize", Napi::Function::New(env, Dequantize));
  exports.Set("systemInfo", Napi::Function::New(env, SystemInfo));
  return exports;
}

}  // namespace

NODE_API_MODULE(llamakv, Init)
