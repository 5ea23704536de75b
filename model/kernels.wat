;; SIMD kernels of the host decode step (model/hoststep.ts), over one shared linear memory.
;; Pointers are byte offsets, lengths are float counts. Built into model/kernels.wasm.ts by
;; `npm run build:kernels` (wabt); test/hostkernels.test.ts checks the two agree.
(module
  (import "env" "memory" (memory 1))

  ;; dot(a[0..n), b[0..n)) with four f32 lanes, then the tail one by one.
  (func $dot (param $a i32) (param $b i32) (param $n i32) (result f32)
    (local $acc v128) (local $i i32) (local $end4 i32) (local $s f32)
    (local.set $end4 (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2)))
    (local.set $acc (v128.const f32x4 0 0 0 0))
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (local.get $end4)))
      (local.set $acc
        (f32x4.add (local.get $acc)
          (f32x4.mul (v128.load (i32.add (local.get $a) (local.get $i)))
                     (v128.load (i32.add (local.get $b) (local.get $i))))))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $l)))
    (local.set $s
      (f32.add
        (f32.add (f32x4.extract_lane 0 (local.get $acc)) (f32x4.extract_lane 1 (local.get $acc)))
        (f32.add (f32x4.extract_lane 2 (local.get $acc)) (f32x4.extract_lane 3 (local.get $acc)))))
    (block $d2 (loop $l2
      (br_if $d2 (i32.ge_u (local.get $i) (i32.shl (local.get $n) (i32.const 2))))
      (local.set $s
        (f32.add (local.get $s)
          (f32.mul (f32.load (i32.add (local.get $a) (local.get $i)))
                   (f32.load (i32.add (local.get $b) (local.get $i))))))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $l2)))
    (local.get $s))

  ;; y[o] = (bias ? b[o] : 0) + dot(x[0..n), w[o * stride .. o * stride + n)) for o < m.
  ;; A linear layer ([out, in] weights: stride = n) or the scores of m keys (stride = head dim).
  (func (export "matvec") (param $x i32) (param $w i32) (param $stride i32) (param $b i32) (param $bias i32)
                          (param $y i32) (param $n i32) (param $m i32)
    (local $o i32) (local $rowBytes i32) (local $s f32)
    (local.set $rowBytes (i32.shl (local.get $stride) (i32.const 2)))
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $o) (local.get $m)))
      (local.set $s (call $dot (local.get $x) (local.get $w) (local.get $n)))
      (if (local.get $bias)
        (then (local.set $s (f32.add (local.get $s) (f32.load (i32.add (local.get $b) (i32.shl (local.get $o) (i32.const 2))))))))
      (f32.store (i32.add (local.get $y) (i32.shl (local.get $o) (i32.const 2))) (local.get $s))
      (local.set $w (i32.add (local.get $w) (local.get $rowBytes)))
      (local.set $o (i32.add (local.get $o) (i32.const 1)))
      (br $l))))

  ;; out[0..n) = sum over j < m of p[j] * v[j * stride .. j * stride + n): attention's weighted sum.
  (func (export "wsum") (param $p i32) (param $v i32) (param $stride i32) (param $out i32) (param $n i32) (param $m i32)
    (local $j i32) (local $i i32) (local $end4 i32) (local $pj f32) (local $pv v128) (local $rowBytes i32) (local $nBytes i32)
    (local.set $end4 (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2)))
    (local.set $nBytes (i32.shl (local.get $n) (i32.const 2)))
    (local.set $rowBytes (i32.shl (local.get $stride) (i32.const 2)))
    ;; out = 0
    (local.set $i (i32.const 0))
    (block $z (loop $lz
      (br_if $z (i32.ge_u (local.get $i) (local.get $nBytes)))
      (f32.store (i32.add (local.get $out) (local.get $i)) (f32.const 0))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $lz)))
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $j) (local.get $m)))
      (local.set $pj (f32.load (i32.add (local.get $p) (i32.shl (local.get $j) (i32.const 2)))))
      (if (f32.ne (local.get $pj) (f32.const 0))
        (then
          (local.set $pv (f32x4.splat (local.get $pj)))
          (local.set $i (i32.const 0))
          (block $d2 (loop $l2
            (br_if $d2 (i32.ge_u (local.get $i) (local.get $end4)))
            (v128.store (i32.add (local.get $out) (local.get $i))
              (f32x4.add (v128.load (i32.add (local.get $out) (local.get $i)))
                (f32x4.mul (local.get $pv) (v128.load (i32.add (local.get $v) (local.get $i))))))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $l2)))
          (block $d3 (loop $l3
            (br_if $d3 (i32.ge_u (local.get $i) (local.get $nBytes)))
            (f32.store (i32.add (local.get $out) (local.get $i))
              (f32.add (f32.load (i32.add (local.get $out) (local.get $i)))
                (f32.mul (local.get $pj) (f32.load (i32.add (local.get $v) (local.get $i))))))
            (local.set $i (i32.add (local.get $i) (i32.const 4)))
            (br $l3)))))
      (local.set $v (i32.add (local.get $v) (local.get $rowBytes)))
      (local.set $j (i32.add (local.get $j) (i32.const 1)))
      (br $l))))
)
