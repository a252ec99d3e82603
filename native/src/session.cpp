// session.cpp — prefill, generation, rewind and state files of one session, on the CPU or
// delegated to a CudaSession (every CUDA branch is an `if (cuda_)`; the CPU path is unchanged).
#include "session.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>
#include <vector>

#include "cuda/cuda_backend.h"

namespace lkv {

Engine::Engine(int threads) : kernels(&kernels_best()) {
  if (threads <= 0) threads = (int)std::max(1u, std::thread::hardware_concurrency());
  pool = std::make_unique<ThreadPool>(threads);
}

Session::Session(std::shared_ptr<const Model> model, std::shared_ptr<Engine> engine, int n_ctx, const std::string& kv_spec)
    : model_(std::move(model)), engine_(std::move(engine)), n_ctx_(n_ctx) {
  if (engine_->cuda) {
    std::string why;
    const std::string device_spec = cuda_kv_for(kv_spec, &why);
    if (device_spec.empty()) {
      backend_note_ = "KV spec '" + kv_spec + "' runs on the CPU: " + why;
    } else {
      try {
        std::lock_guard<std::mutex> lock(engine_->device);
        cuda_ = engine_->cuda->new_session(n_ctx, device_spec);
        if (device_spec != kv_spec) backend_note_ = why;
      } catch (const std::exception& e) {
        if (engine_->cuda_required) throw;
        backend_note_ = std::string("this session runs on the CPU: ") + e.what();
      }
    }
    if (cuda_) {
      state_ = std::make_unique<SessionState>();  // tokens and has_logits; the cache is on the device
      return;
    }
  }
  state_ = make_session_state(*model_, n_ctx, kv_spec);
}

Session::~Session() {
  state_.reset();
  release_free_memory();
}

const std::vector<float>* Session::logits() const {
  if (!state_->has_logits) return nullptr;
  if (cuda_) {
    std::lock_guard<std::mutex> lock(engine_->device);
    return &cuda_->logits();
  }
  return &state_->logits;
}

std::string Session::kv_spec() const { return cuda_ ? cuda_->kv_spec() : state_->kv->spec(); }

KvStats Session::kv_stats() const { return cuda_ ? cuda_->kv_stats() : state_->kv->stats(); }

void Session::eval(const std::vector<int32_t>& tokens, bool want_logits, const std::function<void(int, int)>& progress) {
  LKV_CHECK(!tokens.empty(), "eval: no tokens");
  if (cuda_) {
    std::lock_guard<std::mutex> lock(engine_->device);
    state_->has_logits = false;
    const int before = cuda_->n_tokens();
    try {
      cuda_->eval(tokens.data(), (int)tokens.size(), want_logits, &cancel_, progress);
    } catch (...) {
      // chunks evaluated before a cancel or an error stay in the context, as on the CPU
      const int done = cuda_->n_tokens() - before;
      state_->tokens.insert(state_->tokens.end(), tokens.begin(), tokens.begin() + done);
      throw;
    }
    state_->tokens.insert(state_->tokens.end(), tokens.begin(), tokens.end());
    state_->has_logits = want_logits;
    return;
  }
  std::lock_guard<std::mutex> lock(engine_->compute);
  ForwardContext ctx;
  ctx.kernels = engine_->kernels;
  ctx.pool = engine_->pool.get();
  ctx.cancel = &cancel_;
  forward(*model_, *state_, tokens.data(), (int)tokens.size(), ctx, want_logits, progress);
}

GenerateResult Session::generate(const SamplingParams& sp, int max_tokens, const std::function<void(int32_t)>& on_token) {
  LKV_CHECK(state_->has_logits, "generate: evaluate a prompt first (no logits yet)");
  LKV_CHECK(max_tokens >= 0, "generate: max_tokens must be >= 0");
  Sampler sampler(sp);
  // Greedy without a repetition penalty is an arg-max: on CUDA it runs on the device and only the
  // token id comes back (the logits stay there unless logits() asks for them).
  const bool device_argmax = cuda_ && sp.temperature <= 0.0f && (sp.repeat_penalty == 1.0f || sp.repeat_last_n == 0);
  GenerateResult r;
  r.reason = "length";
  const Tokenizer& tok = *model_->tokenizer;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < max_tokens; i++) {
    if (cancel_.load()) { r.reason = "cancelled"; break; }
    int32_t next;
    if (device_argmax) {
      std::lock_guard<std::mutex> lock(engine_->device);
      next = cuda_->argmax();
    } else {
      next = sampler.sample(logits()->data(), model_->cfg.n_vocab, state_->tokens);
    }
    r.tokens++;
    on_token(next);
    if (tok.is_eog(next)) { r.reason = "eos"; break; }
    if (n_tokens() >= n_ctx_) { r.reason = "length"; break; }
    try {
      eval({next}, true, {});
    } catch (const Error& e) {
      if (std::string(e.what()) == "cancelled") { r.reason = "cancelled"; break; }
      throw;
    }
  }
  r.decode_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

void Session::truncate(int n) {
  LKV_CHECK(n >= 0 && n <= n_tokens(), "truncate: %d is outside [0, %d]", n, n_tokens());
  if (cuda_) {
    std::lock_guard<std::mutex> lock(engine_->device);
    cuda_->truncate(n);
    state_->tokens.resize((size_t)n);
    state_->has_logits = false;
    return;
  }
  std::lock_guard<std::mutex> lock(engine_->compute);
  state_->kv->truncate(n);
  state_->tokens.resize((size_t)n);
  state_->has_logits = false;
}

// ---- state files ----------------------------------------------------------------------------

namespace {
constexpr char kMagic[4] = {'L', 'K', 'V', 'S'};
constexpr uint32_t kVersion = 1;

constexpr uint64_t kFnvSeed = 1469598103934665603ULL;  // FNV-1a's offset basis

uint64_t fnv1a(const char* p, size_t n, uint64_t h = kFnvSeed) {
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 1099511628211ULL;
  return h;
}

void put_str(std::ostream& o, const std::string& s) {
  const uint64_t n = s.size();
  o.write((const char*)&n, 8);
  o.write(s.data(), (std::streamsize)n);
}

// An output buffer in front of a file that keeps the FNV-1a hash of everything written: a state
// file is written as it is produced, never held whole in memory (a 32k-token f16 cache is 1 GiB).
class HashingFileBuf final : public std::streambuf {
 public:
  explicit HashingFileBuf(std::ofstream& out) : out_(out), buf_(1 << 20) { setp(buf_.data(), buf_.data() + buf_.size()); }
  uint64_t hash() {
    flush_buf();
    return h_;
  }

 protected:
  int_type overflow(int_type c) override {
    flush_buf();
    if (!traits_type::eq_int_type(c, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(c);
      pbump(1);
    }
    return out_ ? traits_type::not_eof(c) : traits_type::eof();
  }
  int sync() override {
    flush_buf();
    return out_ ? 0 : -1;
  }

 private:
  void flush_buf() {
    const std::ptrdiff_t n = pptr() - pbase();
    if (n > 0) {
      h_ = fnv1a(pbase(), (size_t)n, h_);
      out_.write(pbase(), n);
    }
    setp(buf_.data(), buf_.data() + buf_.size());
  }
  std::ofstream& out_;
  std::vector<char> buf_;
  uint64_t h_ = kFnvSeed;
};

// FNV-1a of the first n bytes of a file, read in pieces.
uint64_t fnv1a_file(std::ifstream& in, uint64_t n) {
  std::vector<char> buf(1 << 20);
  uint64_t h = kFnvSeed;
  in.seekg(0);
  while (n > 0 && in) {
    const size_t k = (size_t)std::min<uint64_t>(n, buf.size());
    in.read(buf.data(), (std::streamsize)k);
    h = fnv1a(buf.data(), (size_t)in.gcount(), h);
    n -= (uint64_t)in.gcount();
  }
  return h;
}

std::string get_str(std::istream& in, size_t limit) {
  uint64_t n = 0;
  in.read((char*)&n, 8);
  LKV_CHECK(in && n <= limit, "state file: bad string length");
  std::string s((size_t)n, '\0');
  in.read(&s[0], (std::streamsize)n);
  LKV_CHECK((bool)in, "state file: truncated");
  return s;
}
}  // namespace

// Bytes of an f16 cache's payload holding n positions (DenseKvCache<uint16_t>::save): the count,
// then per layer and KV head the keys in whole tiles of 64 positions and the values.
static uint64_t cuda_f16_payload_bytes(const LlamaConfig& c, uint64_t n) {
  const uint64_t tiles = (n + 63) / 64;
  return 4 + (uint64_t)c.n_layer * c.n_head_kv * (tiles * 64 + n) * c.head_dim * 2;
}

std::string Session::model_identity() const {
  const LlamaConfig& c = model_->cfg;
  // Shape, vocabulary size, a fingerprint of the file header (metadata and tensor table) and of
  // 64 samples of 4 KiB spread over the tensor data: files that differ only in weights differ.
  const GgufFile& f = *model_->file;
  const uint64_t head_end = std::min<uint64_t>(f.data_offset, f.size());
  uint64_t h = fnv1a((const char*)f.base(), (size_t)head_end);
  const uint64_t data_len = f.size() - head_end;
  const uint64_t sample = 4096;
  for (int i = 0; i < 64 && data_len > 0; i++) {
    const uint64_t off = head_end + (data_len > sample ? (data_len - sample) * i / 63 : 0);
    h = fnv1a((const char*)f.base() + off, (size_t)std::min(sample, f.size() - off), h);
  }
  return strprintf("llama L%d E%d H%d/%d D%d F%d V%d size=%zu fp=%016llx", c.n_layer, c.n_embd, c.n_head, c.n_head_kv,
                   c.head_dim, c.n_ff, c.n_vocab, f.size(), (unsigned long long)h);
}

void Session::save(const std::string& path, const std::string& meta) const {
  const std::string tmp = path + ".tmp" + std::to_string((uintptr_t)this);
  try {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    LKV_CHECK((bool)out, "cannot write state file %s", tmp.c_str());
    HashingFileBuf hb(out);
    std::ostream body(&hb);
    body.write(kMagic, 4);
    body.write((const char*)&kVersion, 4);
    put_str(body, model_identity());
    put_str(body, kv_spec());
    put_str(body, meta);
    const uint64_t nt = state_->tokens.size();
    body.write((const char*)&nt, 8);
    body.write((const char*)state_->tokens.data(), (std::streamsize)(nt * sizeof(int32_t)));
    if (cuda_) {
      std::lock_guard<std::mutex> lock(engine_->device);
      cuda_->save_kv(body);  // the f16 cache's payload, byte for byte: files move between backends
    } else {
      state_->kv->save(body);
    }
    const uint64_t sum = hb.hash();
    out.write((const char*)&sum, 8);
    out.flush();
    LKV_CHECK(body && out, "failed writing state file %s (disk full?)", tmp.c_str());
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(strprintf("cannot move state file into place at %s", path.c_str()));
  }
}

// Read twice, never held whole in memory: first the checksum over the file, then the payload
// straight from the file into the new cache (so a corrupt file changes nothing).
std::string Session::load(const std::string& path) {
  std::ifstream body(path, std::ios::binary);
  LKV_CHECK((bool)body, "cannot open state file %s", path.c_str());
  body.seekg(0, std::ios::end);
  const uint64_t size = (uint64_t)body.tellg();
  char magic[4] = {0, 0, 0, 0};
  body.seekg(0);
  body.read(magic, 4);
  LKV_CHECK(body && size >= 16 && std::memcmp(magic, kMagic, 4) == 0, "%s is not a llamakv state file", path.c_str());
  uint64_t sum = 0;
  body.seekg((std::streamoff)(size - 8));
  body.read((char*)&sum, 8);
  LKV_CHECK(body && fnv1a_file(body, size - 8) == sum, "state file %s is corrupt (checksum mismatch)", path.c_str());
  body.clear();
  body.seekg(4);
  const uint64_t payload_end = size - 8;  // the checksum follows the payload
  uint32_t version = 0;
  body.read((char*)&version, 4);
  LKV_CHECK(version == kVersion, "state file %s has version %u, this build reads %u", path.c_str(), version, kVersion);
  const std::string ident = get_str(body, 4096);
  LKV_CHECK(ident == model_identity(), "state file %s was made with a different model (%s)", path.c_str(), ident.c_str());
  const std::string spec = get_str(body, 4096);
  LKV_CHECK(spec == kv_spec(), "state file %s uses KV spec '%s', this session uses '%s'", path.c_str(), spec.c_str(),
            kv_spec().c_str());
  std::string meta = get_str(body, (size_t)size);
  uint64_t nt = 0;
  body.read((char*)&nt, 8);
  LKV_CHECK(body && nt <= (uint64_t)n_ctx_, "state file %s holds %llu tokens, more than this session's context %d", path.c_str(),
            (unsigned long long)nt, n_ctx_);
  std::vector<int32_t> toks((size_t)nt);
  body.read((char*)toks.data(), (std::streamsize)(nt * sizeof(int32_t)));
  LKV_CHECK((bool)body, "state file %s is truncated", path.c_str());
  if (cuda_) {
    // The device cache is overwritten as the payload is read, so check its size first: a bad file
    // must leave the session untouched.
    const uint64_t at = (uint64_t)body.tellg();
    const uint64_t rest = payload_end - at;
    // (a compressed payload is checked by load_kv itself, which leaves the session as it was)
    if (spec == "f16") {
      const uint64_t want = cuda_f16_payload_bytes(model_->cfg, nt);
      int32_t n = -1;
      if (rest >= 4) {
        body.read((char*)&n, 4);
        body.seekg((std::streamoff)at);
      }
      LKV_CHECK(rest == want && n == (int32_t)nt, "state file %s: the cache payload does not match its %llu tokens", path.c_str(),
                (unsigned long long)nt);
    }
    std::lock_guard<std::mutex> lock(engine_->device);
    try {
      cuda_->load_kv(body);
    } catch (const Error& e) {
      throw Error(strprintf("state file %s: %s", path.c_str(), e.what()));
    }
    LKV_CHECK(cuda_->n_tokens() == (int)nt, "state file %s: cache holds %d tokens, token list %llu", path.c_str(), cuda_->n_tokens(),
              (unsigned long long)nt);
    state_->tokens = std::move(toks);
    state_->has_logits = false;
    return meta;
  }
  auto fresh = make_session_state(*model_, n_ctx_, spec);
  fresh->kv->load(body);
  LKV_CHECK(body && (uint64_t)body.tellg() == payload_end, "state file %s: the cache payload does not end where the file does", path.c_str());
  LKV_CHECK(fresh->kv->n_tokens() == (int)nt, "state file %s: cache holds %d tokens, token list %llu", path.c_str(),
            fresh->kv->n_tokens(), (unsigned long long)nt);
  fresh->tokens = std::move(toks);
  {
    std::lock_guard<std::mutex> lock(engine_->compute);
    state_ = std::move(fresh);  // frees the old cache
  }
  release_free_memory();
  return meta;
}

}  // namespace lkv
