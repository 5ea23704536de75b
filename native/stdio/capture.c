// Captures what the process writes to stderr (fd 2) while a native library loads, so that
// TensorFlow's start-up lines can be sifted out (core/backend.ts) and everything else passed
// on. TensorFlow 2.21 logs through absl, which until absl::InitializeLog() writes to stderr
// whatever TF_CPP_MIN_LOG_LEVEL says, and it logs from static initialisers of
// libtensorflow_framework (on CPUs where oneDNN turns on: "oneDNN custom operations are
// on"), before any code of ours can run in that library. This module links nothing but libc,
// so it is loaded first. Built by scripts/native-ops.mjs as sinklm_stdio.node.
//
//   begin(): fd 2 now writes to an unlinked temporary file (false if already capturing or
//            the redirect failed; stderr is then untouched).
//   end():   fd 2 restored; returns what was written meanwhile ('' if not capturing).

#include <node_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int saved_fd = -1;
static FILE* sink = NULL;

static napi_value Begin(napi_env env, napi_callback_info info) {
  (void)info;
  int ok = 0;
  if (saved_fd < 0) {
    fflush(stderr);
    sink = tmpfile();
    saved_fd = sink ? dup(2) : -1;
    if (saved_fd >= 0 && dup2(fileno(sink), 2) >= 0) {
      ok = 1;
    } else {
      if (saved_fd >= 0) close(saved_fd);
      if (sink) fclose(sink);
      saved_fd = -1;
      sink = NULL;
    }
  }
  napi_value result;
  napi_get_boolean(env, ok, &result);
  return result;
}

static napi_value End(napi_env env, napi_callback_info info) {
  (void)info;
  char* text = NULL;
  size_t len = 0;
  if (saved_fd >= 0) {
    fflush(stderr);
    dup2(saved_fd, 2);
    close(saved_fd);
    saved_fd = -1;
    const off_t size = lseek(fileno(sink), 0, SEEK_END);
    if (size > 0 && (text = malloc((size_t)size)) != NULL && lseek(fileno(sink), 0, SEEK_SET) == 0) {
      ssize_t n;
      while (len < (size_t)size && (n = read(fileno(sink), text + len, (size_t)size - len)) > 0) len += (size_t)n;
    }
    fclose(sink);
    sink = NULL;
  }
  napi_value result;
  napi_create_string_utf8(env, text ? text : "", len, &result);
  free(text);
  return result;
}

static napi_value Init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "begin", NAPI_AUTO_LENGTH, Begin, NULL, &fn);
  napi_set_named_property(env, exports, "begin", fn);
  napi_create_function(env, "end", NAPI_AUTO_LENGTH, End, NULL, &fn);
  napi_set_named_property(env, exports, "end", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
