;; SIMD kernels of the host decode step (model/hoststep.ts), over one shared linear memory.
;; Pointers are byte offsets, lengths are float counts. Built into model/kernels.wasm.ts by
;; `npm run build:kernels` (wabt); test/hostkernels.test.ts checks the two agree.
(module
  (import "env" "memory" (memory 1 65536 shared))

  ;; The sum of four lanes as (l0 + l2) + (l1 + l3): every kernel reduces a dot product's
  ;; lanes in this order ($sum4 does four at once), so they agree bit for bit.
  (func $hsum (param $a v128) (result f32)
    (f32.add (f32.add (f32x4.extract_lane 0 (local.get $a)) (f32x4.extract_lane 2 (local.get $a)))
             (f32.add (f32x4.extract_lane 1 (local.get $a)) (f32x4.extract_lane 3 (local.get $a)))))

  ;; [hsum a0, hsum a1, hsum a2, hsum a3] in one vector, bit for bit: lanes paired (0 with 2,
  ;; 1 with 3) by two interleaves, then the pairs added.
  (func $sum4 (param $a0 v128) (param $a1 v128) (param $a2 v128) (param $a3 v128) (result v128)
    (local $s01 v128) (local $s23 v128)
    ;; [a0.0 + a0.2, a1.0 + a1.2, a0.1 + a0.3, a1.1 + a1.3], and the same of a2, a3
    (local.set $s01 (f32x4.add
      (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a0) (local.get $a1))
      (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a0) (local.get $a1))))
    (local.set $s23 (f32x4.add
      (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a2) (local.get $a3))
      (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a2) (local.get $a3))))
    (f32x4.add
      (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $s01) (local.get $s23))
      (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $s01) (local.get $s23))))

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
    (local.set $s (call $hsum (local.get $acc)))
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
  ;; When n is a multiple of 4, four rows at a time: x is loaded once for four rows, their
  ;; sums are four independent chains, and $sum4 reduces them into one store; each sum is
  ;; $dot's, bit for bit. The rows left over (and any n with a tail) go one by one.
  (func (export "matvec") (param $x i32) (param $w i32) (param $stride i32) (param $b i32) (param $bias i32)
                          (param $y i32) (param $n i32) (param $m i32)
    (local $o i32) (local $rowBytes i32) (local $s f32) (local $i i32) (local $nBytes i32)
    (local $w1 i32) (local $w2 i32) (local $w3 i32) (local $xv v128) (local $r v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local.set $rowBytes (i32.shl (local.get $stride) (i32.const 2)))
    (local.set $nBytes (i32.shl (local.get $n) (i32.const 2)))
    (if (i32.eqz (i32.and (local.get $n) (i32.const 3)))
      (then
        (block $d4 (loop $l4
          (br_if $d4 (i32.gt_u (i32.add (local.get $o) (i32.const 4)) (local.get $m)))
          (local.set $w1 (i32.add (local.get $w) (local.get $rowBytes)))
          (local.set $w2 (i32.add (local.get $w1) (local.get $rowBytes)))
          (local.set $w3 (i32.add (local.get $w2) (local.get $rowBytes)))
          (local.set $a0 (v128.const f32x4 0 0 0 0))
          (local.set $a1 (v128.const f32x4 0 0 0 0))
          (local.set $a2 (v128.const f32x4 0 0 0 0))
          (local.set $a3 (v128.const f32x4 0 0 0 0))
          (local.set $i (i32.const 0))
          (block $di (loop $li
            (br_if $di (i32.ge_u (local.get $i) (local.get $nBytes)))
            (local.set $xv (v128.load (i32.add (local.get $x) (local.get $i))))
            (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $xv) (v128.load (i32.add (local.get $w) (local.get $i))))))
            (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $xv) (v128.load (i32.add (local.get $w1) (local.get $i))))))
            (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $xv) (v128.load (i32.add (local.get $w2) (local.get $i))))))
            (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $xv) (v128.load (i32.add (local.get $w3) (local.get $i))))))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $li)))
          (local.set $r (call $sum4 (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3)))
          (if (local.get $bias)
            (then (local.set $r (f32x4.add (local.get $r) (v128.load (i32.add (local.get $b) (i32.shl (local.get $o) (i32.const 2))))))))
          (v128.store (i32.add (local.get $y) (i32.shl (local.get $o) (i32.const 2))) (local.get $r))
          (local.set $w (i32.add (local.get $w3) (local.get $rowBytes)))
          (local.set $o (i32.add (local.get $o) (i32.const 4)))
          (br $l4)))))
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $o) (local.get $m)))
      (local.set $s (call $dot (local.get $x) (local.get $w) (local.get $n)))
      (if (local.get $bias)
        (then (local.set $s (f32.add (local.get $s) (f32.load (i32.add (local.get $b) (i32.shl (local.get $o) (i32.const 2))))))))
      (f32.store (i32.add (local.get $y) (i32.shl (local.get $o) (i32.const 2))) (local.get $s))
      (local.set $w (i32.add (local.get $w) (local.get $rowBytes)))
      (local.set $o (i32.add (local.get $o) (i32.const 1)))
      (br $l))))

  ;; $dot of one weight row w[0..n) with four inputs at once, stored (plus bv when $bias) at
  ;; y0..y3. Four independent sums: the weights are loaded once, and the adds of one sum do
  ;; not wait on another's. Each sum takes $dot's lanes, order and tail, so it equals $dot's
  ;; bit for bit.
  (func $dot4 (param $x0 i32) (param $x1 i32) (param $x2 i32) (param $x3 i32) (param $w i32) (param $n i32)
              (param $bias i32) (param $bv f32) (param $y0 i32) (param $y1 i32) (param $y2 i32) (param $y3 i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128) (local $wv v128)
    (local $i i32) (local $end4 i32) (local $wf f32)
    (local $s0 f32) (local $s1 f32) (local $s2 f32) (local $s3 f32)
    (local.set $end4 (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2)))
    (local.set $a0 (v128.const f32x4 0 0 0 0))
    (local.set $a1 (v128.const f32x4 0 0 0 0))
    (local.set $a2 (v128.const f32x4 0 0 0 0))
    (local.set $a3 (v128.const f32x4 0 0 0 0))
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (local.get $end4)))
      (local.set $wv (v128.load (i32.add (local.get $w) (local.get $i))))
      (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (v128.load (i32.add (local.get $x0) (local.get $i))) (local.get $wv))))
      (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (v128.load (i32.add (local.get $x1) (local.get $i))) (local.get $wv))))
      (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (v128.load (i32.add (local.get $x2) (local.get $i))) (local.get $wv))))
      (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (v128.load (i32.add (local.get $x3) (local.get $i))) (local.get $wv))))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $l)))
    (local.set $s0 (call $hsum (local.get $a0)))
    (local.set $s1 (call $hsum (local.get $a1)))
    (local.set $s2 (call $hsum (local.get $a2)))
    (local.set $s3 (call $hsum (local.get $a3)))
    (block $d2 (loop $l2
      (br_if $d2 (i32.ge_u (local.get $i) (i32.shl (local.get $n) (i32.const 2))))
      (local.set $wf (f32.load (i32.add (local.get $w) (local.get $i))))
      (local.set $s0 (f32.add (local.get $s0) (f32.mul (f32.load (i32.add (local.get $x0) (local.get $i))) (local.get $wf))))
      (local.set $s1 (f32.add (local.get $s1) (f32.mul (f32.load (i32.add (local.get $x1) (local.get $i))) (local.get $wf))))
      (local.set $s2 (f32.add (local.get $s2) (f32.mul (f32.load (i32.add (local.get $x2) (local.get $i))) (local.get $wf))))
      (local.set $s3 (f32.add (local.get $s3) (f32.mul (f32.load (i32.add (local.get $x3) (local.get $i))) (local.get $wf))))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $l2)))
    (if (local.get $bias)
      (then
        (local.set $s0 (f32.add (local.get $s0) (local.get $bv)))
        (local.set $s1 (f32.add (local.get $s1) (local.get $bv)))
        (local.set $s2 (f32.add (local.get $s2) (local.get $bv)))
        (local.set $s3 (f32.add (local.get $s3) (local.get $bv)))))
    (f32.store (local.get $y0) (local.get $s0))
    (f32.store (local.get $y1) (local.get $s1))
    (f32.store (local.get $y2) (local.get $s2))
    (f32.store (local.get $y3) (local.get $s3)))

  ;; matvec for `rows` inputs at once: y[r * m + o] = (bias ? b[o] : 0) + dot(x[r * n ..], w[o * n ..])
  ;; for r < rows, o < m. Each weight row is read once for four inputs ($dot4), so a batched
  ;; or multi-token step does not pay the weights' memory traffic once per row; each sum is
  ;; the one matvec makes, bit for bit.
  (func (export "matrows") (param $x i32) (param $rows i32) (param $w i32) (param $b i32) (param $bias i32)
                           (param $y i32) (param $n i32) (param $m i32)
    (local $o i32) (local $r i32) (local $s f32) (local $bv f32) (local $rowBytes i32) (local $outBytes i32)
    (local $xr i32) (local $yr i32)
    (local.set $rowBytes (i32.shl (local.get $n) (i32.const 2)))
    (local.set $outBytes (i32.shl (local.get $m) (i32.const 2)))
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $o) (local.get $m)))
      (if (local.get $bias)
        (then (local.set $bv (f32.load (i32.add (local.get $b) (i32.shl (local.get $o) (i32.const 2)))))))
      (local.set $r (i32.const 0))
      (block $d4 (loop $l4
        (br_if $d4 (i32.gt_u (i32.add (local.get $r) (i32.const 4)) (local.get $rows)))
        (local.set $xr (i32.add (local.get $x) (i32.mul (local.get $r) (local.get $rowBytes))))
        (local.set $yr (i32.add (i32.add (local.get $y) (i32.mul (local.get $r) (local.get $outBytes))) (i32.shl (local.get $o) (i32.const 2))))
        (call $dot4
          (local.get $xr)
          (i32.add (local.get $xr) (local.get $rowBytes))
          (i32.add (local.get $xr) (i32.shl (local.get $rowBytes) (i32.const 1)))
          (i32.add (local.get $xr) (i32.mul (local.get $rowBytes) (i32.const 3)))
          (local.get $w) (local.get $n) (local.get $bias) (local.get $bv)
          (local.get $yr)
          (i32.add (local.get $yr) (local.get $outBytes))
          (i32.add (local.get $yr) (i32.shl (local.get $outBytes) (i32.const 1)))
          (i32.add (local.get $yr) (i32.mul (local.get $outBytes) (i32.const 3))))
        (local.set $r (i32.add (local.get $r) (i32.const 4)))
        (br $l4)))
      (block $dr (loop $lr
        (br_if $dr (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $s (call $dot (i32.add (local.get $x) (i32.mul (local.get $r) (local.get $rowBytes))) (local.get $w) (local.get $n)))
        (if (local.get $bias)
          (then (local.set $s (f32.add (local.get $s) (local.get $bv)))))
        (f32.store
          (i32.add (i32.add (local.get $y) (i32.mul (local.get $r) (local.get $outBytes))) (i32.shl (local.get $o) (i32.const 2)))
          (local.get $s))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $lr)))
      (local.set $w (i32.add (local.get $w) (local.get $rowBytes)))
      (local.set $o (i32.add (local.get $o) (i32.const 1)))
      (br $l))))

  ;; out[0..n) = sum over j < m of p[j] * v[j * stride .. j * stride + n): attention's weighted sum.
  ;; Column chunks of 32 floats are summed in eight vector registers over all m rows, then
  ;; stored once (a head of 32 dims is one pass); what is left, by 4 floats, then one by one.
  ;; Each out[i] is p[0] v[0][i] + p[1] v[1][i] + ... in row order, from 0.
  (func (export "wsum") (param $p i32) (param $v i32) (param $stride i32) (param $out i32) (param $n i32) (param $m i32)
    (local $j i32) (local $c i32) (local $vc i32) (local $pv v128) (local $rowBytes i32) (local $nBytes i32)
    (local $pj f32) (local $sc f32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $a4 v128) (local $a5 v128) (local $a6 v128) (local $a7 v128)
    (local.set $nBytes (i32.shl (local.get $n) (i32.const 2)))
    (local.set $rowBytes (i32.shl (local.get $stride) (i32.const 2)))
    ;; Chunks of 32 floats (128 bytes).
    (block $d32 (loop $l32
      (br_if $d32 (i32.gt_u (i32.add (local.get $c) (i32.const 128)) (local.get $nBytes)))
      (local.set $a0 (v128.const f32x4 0 0 0 0))
      (local.set $a1 (v128.const f32x4 0 0 0 0))
      (local.set $a2 (v128.const f32x4 0 0 0 0))
      (local.set $a3 (v128.const f32x4 0 0 0 0))
      (local.set $a4 (v128.const f32x4 0 0 0 0))
      (local.set $a5 (v128.const f32x4 0 0 0 0))
      (local.set $a6 (v128.const f32x4 0 0 0 0))
      (local.set $a7 (v128.const f32x4 0 0 0 0))
      (local.set $vc (i32.add (local.get $v) (local.get $c)))
      (local.set $j (i32.const 0))
      (block $d (loop $l
        (br_if $d (i32.ge_u (local.get $j) (local.get $m)))
        (local.set $pv (v128.load32_splat (i32.add (local.get $p) (i32.shl (local.get $j) (i32.const 2)))))
        (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $pv) (v128.load offset=0 (local.get $vc)))))
        (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $pv) (v128.load offset=16 (local.get $vc)))))
        (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $pv) (v128.load offset=32 (local.get $vc)))))
        (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $pv) (v128.load offset=48 (local.get $vc)))))
        (local.set $a4 (f32x4.add (local.get $a4) (f32x4.mul (local.get $pv) (v128.load offset=64 (local.get $vc)))))
        (local.set $a5 (f32x4.add (local.get $a5) (f32x4.mul (local.get $pv) (v128.load offset=80 (local.get $vc)))))
        (local.set $a6 (f32x4.add (local.get $a6) (f32x4.mul (local.get $pv) (v128.load offset=96 (local.get $vc)))))
        (local.set $a7 (f32x4.add (local.get $a7) (f32x4.mul (local.get $pv) (v128.load offset=112 (local.get $vc)))))
        (local.set $vc (i32.add (local.get $vc) (local.get $rowBytes)))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $l)))
      (local.set $vc (i32.add (local.get $out) (local.get $c)))
      (v128.store offset=0 (local.get $vc) (local.get $a0))
      (v128.store offset=16 (local.get $vc) (local.get $a1))
      (v128.store offset=32 (local.get $vc) (local.get $a2))
      (v128.store offset=48 (local.get $vc) (local.get $a3))
      (v128.store offset=64 (local.get $vc) (local.get $a4))
      (v128.store offset=80 (local.get $vc) (local.get $a5))
      (v128.store offset=96 (local.get $vc) (local.get $a6))
      (v128.store offset=112 (local.get $vc) (local.get $a7))
      (local.set $c (i32.add (local.get $c) (i32.const 128)))
      (br $l32)))
    ;; Chunks of 4 floats.
    (block $d4 (loop $l4
      (br_if $d4 (i32.gt_u (i32.add (local.get $c) (i32.const 16)) (local.get $nBytes)))
      (local.set $a0 (v128.const f32x4 0 0 0 0))
      (local.set $vc (i32.add (local.get $v) (local.get $c)))
      (local.set $j (i32.const 0))
      (block $d (loop $l
        (br_if $d (i32.ge_u (local.get $j) (local.get $m)))
        (local.set $pv (v128.load32_splat (i32.add (local.get $p) (i32.shl (local.get $j) (i32.const 2)))))
        (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $pv) (v128.load offset=0 (local.get $vc)))))
        (local.set $vc (i32.add (local.get $vc) (local.get $rowBytes)))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $l)))
      (v128.store (i32.add (local.get $out) (local.get $c)) (local.get $a0))
      (local.set $c (i32.add (local.get $c) (i32.const 16)))
      (br $l4)))
    ;; The last floats, one by one.
    (block $d1 (loop $l1
      (br_if $d1 (i32.ge_u (local.get $c) (local.get $nBytes)))
      (local.set $sc (f32.const 0))
      (local.set $vc (i32.add (local.get $v) (local.get $c)))
      (local.set $j (i32.const 0))
      (block $d (loop $l
        (br_if $d (i32.ge_u (local.get $j) (local.get $m)))
        (local.set $pj (f32.load (i32.add (local.get $p) (i32.shl (local.get $j) (i32.const 2)))))
        (local.set $sc (f32.add (local.get $sc) (f32.mul (local.get $pj) (f32.load (local.get $vc)))))
        (local.set $vc (i32.add (local.get $vc) (local.get $rowBytes)))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $l)))
      (f32.store (i32.add (local.get $out) (local.get $c)) (local.get $sc))
      (local.set $c (i32.add (local.get $c) (i32.const 4)))
      (br $l1))))

  ;; exp of four lanes: Cephes' expf (x = n ln2 + r, |r| <= ln2/2, 2^n times a degree-6
  ;; polynomial in r), within 2 ulp of float32 exp; exactly 0 below -87.7 (masked scores).
  (func $exp4 (param $x v128) (result v128)
    (local $n v128) (local $r v128) (local $p v128)
    (local.set $x (f32x4.max (f32x4.min (local.get $x) (v128.const f32x4 88 88 88 88))
                             (v128.const f32x4 -88 -88 -88 -88)))
    (local.set $n (f32x4.nearest (f32x4.mul (local.get $x)
                                            (v128.const f32x4 1.44269504088896341 1.44269504088896341 1.44269504088896341 1.44269504088896341))))
    ;; r = x - n ln2, ln2 in two parts so that n * the first is exact.
    (local.set $r (f32x4.sub (f32x4.sub (local.get $x)
                                        (f32x4.mul (local.get $n) (v128.const f32x4 0.693359375 0.693359375 0.693359375 0.693359375)))
                             (f32x4.mul (local.get $n) (v128.const f32x4 -2.12194440e-4 -2.12194440e-4 -2.12194440e-4 -2.12194440e-4))))
    (local.set $p (v128.const f32x4 1.9875691500e-4 1.9875691500e-4 1.9875691500e-4 1.9875691500e-4))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (v128.const f32x4 1.3981999507e-3 1.3981999507e-3 1.3981999507e-3 1.3981999507e-3)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (v128.const f32x4 8.3334519073e-3 8.3334519073e-3 8.3334519073e-3 8.3334519073e-3)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (v128.const f32x4 4.1665795894e-2 4.1665795894e-2 4.1665795894e-2 4.1665795894e-2)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (v128.const f32x4 1.6666665459e-1 1.6666665459e-1 1.6666665459e-1 1.6666665459e-1)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (v128.const f32x4 5.0000001201e-1 5.0000001201e-1 5.0000001201e-1 5.0000001201e-1)))
    (local.set $p (f32x4.add (f32x4.add (f32x4.mul (local.get $p) (f32x4.mul (local.get $r) (local.get $r))) (local.get $r))
                             (v128.const f32x4 1 1 1 1)))
    ;; times 2^n, built in the exponent bits (n = -127 gives the bits of 0).
    (f32x4.mul (local.get $p)
      (i32x4.shl (i32x4.add (i32x4.trunc_sat_f32x4_s (local.get $n)) (v128.const i32x4 127 127 127 127)) (i32.const 23))))

  ;; exp of one float, through $exp4 (the same value $exp4 gives in a lane).
  (func $exp1 (param $x f32) (result f32)
    (f32x4.extract_lane 0 (call $exp4 (f32x4.splat (local.get $x)))))

  ;; Attention's softmax over the m scores at s, in place. First s[j] += bias[j] (the mask;
  ;; $bias 0: none), then s[j] = exp(s[j] - mx) / (exp(extra - mx) + sum_k exp(s[k] - mx)),
  ;; mx the largest of extra and the scores. extra is the logit of the implicit sink: -inf
  ;; for none (plain softmax), 0 for softmax1, the head's learnt logit for logit. The sum
  ;; is kept in float64 (two f64x2 accumulators).
  (func (export "softmax") (param $s i32) (param $bias i32) (param $m i32) (param $extra f32)
    (local $i i32) (local $end4 i32) (local $end i32) (local $v v128) (local $mx v128) (local $f f32)
    (local $mxs f32) (local $lo v128) (local $hi v128) (local $den f64) (local $inv v128)
    (local.set $end4 (i32.shl (i32.and (local.get $m) (i32.const -4)) (i32.const 2)))
    (local.set $end (i32.shl (local.get $m) (i32.const 2)))
    ;; Pass 1: the mask, and the max.
    (local.set $mx (f32x4.splat (local.get $extra)))
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (local.get $end4)))
      (local.set $v (v128.load (i32.add (local.get $s) (local.get $i))))
      (if (local.get $bias)
        (then (local.set $v (f32x4.add (local.get $v) (v128.load (i32.add (local.get $bias) (local.get $i)))))))
      (v128.store (i32.add (local.get $s) (local.get $i)) (local.get $v))
      (local.set $mx (f32x4.max (local.get $mx) (local.get $v)))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $l)))
    (local.set $mxs
      (f32.max (f32.max (f32x4.extract_lane 0 (local.get $mx)) (f32x4.extract_lane 1 (local.get $mx)))
               (f32.max (f32x4.extract_lane 2 (local.get $mx)) (f32x4.extract_lane 3 (local.get $mx)))))
    (block $d1 (loop $l1
      (br_if $d1 (i32.ge_u (local.get $i) (local.get $end)))
      (local.set $f (f32.load (i32.add (local.get $s) (local.get $i))))
      (if (local.get $bias)
        (then (local.set $f (f32.add (local.get $f) (f32.load (i32.add (local.get $bias) (local.get $i)))))))
      (f32.store (i32.add (local.get $s) (local.get $i)) (local.get $f))
      (local.set $mxs (f32.max (local.get $mxs) (local.get $f)))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $l1)))
    ;; Pass 2: exp(s - mx), summed in float64.
    (local.set $mx (f32x4.splat (local.get $mxs)))
    (local.set $lo (v128.const f64x2 0 0))
    (local.set $hi (v128.const f64x2 0 0))
    (local.set $i (i32.const 0))
    (block $d2 (loop $l2
      (br_if $d2 (i32.ge_u (local.get $i) (local.get $end4)))
      (local.set $v (call $exp4 (f32x4.sub (v128.load (i32.add (local.get $s) (local.get $i))) (local.get $mx))))
      (v128.store (i32.add (local.get $s) (local.get $i)) (local.get $v))
      (local.set $lo (f64x2.add (local.get $lo) (f64x2.promote_low_f32x4 (local.get $v))))
      (local.set $hi (f64x2.add (local.get $hi)
        (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $v) (local.get $v)))))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $l2)))
    (local.set $den
      (f64.add (f64.add (f64x2.extract_lane 0 (local.get $lo)) (f64x2.extract_lane 1 (local.get $lo)))
               (f64.add (f64x2.extract_lane 0 (local.get $hi)) (f64x2.extract_lane 1 (local.get $hi)))))
    (block $d3 (loop $l3
      (br_if $d3 (i32.ge_u (local.get $i) (local.get $end)))
      (local.set $f (call $exp1 (f32.sub (f32.load (i32.add (local.get $s) (local.get $i))) (local.get $mxs))))
      (f32.store (i32.add (local.get $s) (local.get $i)) (local.get $f))
      (local.set $den (f64.add (local.get $den) (f64.promote_f32 (local.get $f))))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $l3)))
    (local.set $den (f64.add (local.get $den) (f64.promote_f32 (call $exp1 (f32.sub (local.get $extra) (local.get $mxs))))))
    ;; Pass 3: normalise.
    (local.set $inv (f32x4.splat (f32.demote_f64 (f64.div (f64.const 1) (local.get $den)))))
    (local.set $i (i32.const 0))
    (block $d4 (loop $l4
      (br_if $d4 (i32.ge_u (local.get $i) (local.get $end4)))
      (v128.store (i32.add (local.get $s) (local.get $i))
        (f32x4.mul (v128.load (i32.add (local.get $s) (local.get $i))) (local.get $inv)))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $l4)))
    (block $d5 (loop $l5
      (br_if $d5 (i32.ge_u (local.get $i) (local.get $end)))
      (f32.store (i32.add (local.get $s) (local.get $i))
        (f32.mul (f32.load (i32.add (local.get $s) (local.get $i))) (f32x4.extract_lane 0 (local.get $inv))))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $l5))))

  ;; GELU of four lanes. $tanh 0: the exact x/2 (1 + erf(x/sqrt2)), with erfc(z) = t
  ;; exp(-z^2 + P(t)), t = 1/(1 + z/2) (Numerical Recipes' Chebyshev fit, 1.2e-7 relative),
  ;; and 1 + erf(u) taken as 2 - erfc(|u|) or erfc(|u|) by the sign of x (no cancellation in
  ;; the negative tail). $tanh 1: x/2 (1 + tanh(v)) = x / (1 + exp(-2v)), v = sqrt(2/pi)
  ;; (x + 0.044715 x^3).
  (func $gelu4 (param $x v128) (param $tanh i32) (result v128)
    (local $z v128) (local $t v128) (local $p v128) (local $r v128)
    (if (result v128) (local.get $tanh)
      (then
        (local.set $p (f32x4.mul (local.get $x)
          (f32x4.add (v128.const f32x4 -1.5957691216057308 -1.5957691216057308 -1.5957691216057308 -1.5957691216057308)
                     (f32x4.mul (v128.const f32x4 -0.0713548162726009 -0.0713548162726009 -0.0713548162726009 -0.0713548162726009)
                                (f32x4.mul (local.get $x) (local.get $x))))))
        (f32x4.div (local.get $x) (f32x4.add (v128.const f32x4 1 1 1 1) (call $exp4 (local.get $p)))))
      (else
        (local.set $z (f32x4.abs (f32x4.mul (local.get $x)
          (v128.const f32x4 0.7071067811865476 0.7071067811865476 0.7071067811865476 0.7071067811865476))))
        (local.set $t (f32x4.div (v128.const f32x4 1 1 1 1)
          (f32x4.add (v128.const f32x4 1 1 1 1) (f32x4.mul (local.get $z) (v128.const f32x4 0.5 0.5 0.5 0.5)))))
        (local.set $p (v128.const f32x4 0.17087277 0.17087277 0.17087277 0.17087277))
        (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $t)) (v128.const f32x4 -0.82215223 -0.82215223 -0.82215223 -0.82215223)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $t)) (v128.const f32x4 1.48851587 1.48851587 1.48851587 1.48851587)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $t)) (v128.const f32x4 -1.13520398 -1.13520398 -1.13520398 -1.13520398)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $t)) (v128.const f32x4 0.27886807 0.27886807 0.27886807 0.27886807)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $t)) (v128.const f32x4 -0.18628806 -0.18628806 -0.18628806 -0.18628806)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $t)) (v128.const f32x4 0.09678418 0.09678418 0.09678418 0.09678418)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $t)) (v128.const f32x4 0.37409196 0.37409196 0.37409196 0.37409196)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $t)) (v128.const f32x4 1.00002368 1.00002368 1.00002368 1.00002368)))
        (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $t)) (v128.const f32x4 -1.26551223 -1.26551223 -1.26551223 -1.26551223)))
        ;; r = erfc(|u|); 1 + erf(u) = 2 - r for x >= 0, r below.
        (local.set $r (f32x4.mul (local.get $t)
          (call $exp4 (f32x4.sub (local.get $p) (f32x4.mul (local.get $z) (local.get $z))))))
        (f32x4.mul (f32x4.mul (local.get $x) (v128.const f32x4 0.5 0.5 0.5 0.5))
          (v128.bitselect (f32x4.sub (v128.const f32x4 2 2 2 2) (local.get $r)) (local.get $r)
                          (f32x4.ge (local.get $x) (v128.const f32x4 0 0 0 0)))))))

  ;; The MLP's activation over n floats at p, in place ($tanh as in $gelu4); a tail of
  ;; fewer than four goes through one lane, the same value a full vector gives.
  (func (export "gelu") (param $p i32) (param $n i32) (param $tanh i32)
    (local $i i32) (local $end4 i32) (local $end i32)
    (local.set $end4 (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2)))
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (local.get $end4)))
      (v128.store (i32.add (local.get $p) (local.get $i))
        (call $gelu4 (v128.load (i32.add (local.get $p) (local.get $i))) (local.get $tanh)))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $l)))
    (block $d1 (loop $l1
      (br_if $d1 (i32.ge_u (local.get $i) (local.get $end)))
      (f32.store (i32.add (local.get $p) (local.get $i))
        (f32x4.extract_lane 0
          (call $gelu4 (f32x4.splat (f32.load (i32.add (local.get $p) (local.get $i)))) (local.get $tanh))))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $l1))))

  ;; The largest of the n floats at p (n >= 1).
  (func (export "maxf") (param $p i32) (param $n i32) (result f32)
    (local $i i32) (local $end4 i32) (local $end i32) (local $mx v128) (local $m f32)
    (local.set $end4 (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2)))
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (local.set $mx (f32x4.splat (f32.load (local.get $p))))
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (local.get $end4)))
      (local.set $mx (f32x4.max (local.get $mx) (v128.load (i32.add (local.get $p) (local.get $i)))))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $l)))
    (local.set $m
      (f32.max (f32.max (f32x4.extract_lane 0 (local.get $mx)) (f32x4.extract_lane 1 (local.get $mx)))
               (f32.max (f32x4.extract_lane 2 (local.get $mx)) (f32x4.extract_lane 3 (local.get $mx)))))
    (block $d1 (loop $l1
      (br_if $d1 (i32.ge_u (local.get $i) (local.get $end)))
      (local.set $m (f32.max (local.get $m) (f32.load (i32.add (local.get $p) (local.get $i)))))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $l1)))
    (local.get $m))

  ;; sum over the n floats at p of exp(p[j] - mx), each exp as $exp4 gives it, summed in
  ;; float64 (two f64x2 accumulators, as the softmax sums). Read only.
  (func (export "sumexp") (param $p i32) (param $n i32) (param $mx f32) (result f64)
    (local $i i32) (local $end4 i32) (local $end i32) (local $v v128) (local $m v128)
    (local $lo v128) (local $hi v128) (local $sum f64)
    (local.set $end4 (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2)))
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (local.set $m (f32x4.splat (local.get $mx)))
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (local.get $end4)))
      (local.set $v (call $exp4 (f32x4.sub (v128.load (i32.add (local.get $p) (local.get $i))) (local.get $m))))
      (local.set $lo (f64x2.add (local.get $lo) (f64x2.promote_low_f32x4 (local.get $v))))
      (local.set $hi (f64x2.add (local.get $hi)
        (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $v) (local.get $v)))))
      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br $l)))
    (local.set $sum
      (f64.add (f64.add (f64x2.extract_lane 0 (local.get $lo)) (f64x2.extract_lane 1 (local.get $lo)))
               (f64.add (f64x2.extract_lane 0 (local.get $hi)) (f64x2.extract_lane 1 (local.get $hi)))))
    (block $d1 (loop $l1
      (br_if $d1 (i32.ge_u (local.get $i) (local.get $end)))
      (local.set $sum (f64.add (local.get $sum)
        (f64.promote_f32 (call $exp1 (f32.sub (f32.load (i32.add (local.get $p) (local.get $i))) (local.get $mx))))))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $l1)))
    (local.get $sum))
)
