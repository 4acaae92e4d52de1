<?php
// GearmanClient (php-gearman, libgearman) driven by a JSON request on stdin; one JSON event
// per line on stdout (see tests/interop/harness.py for the request and event shapes).
declare(strict_types=1);

$req = json_decode(stream_get_contents(STDIN), true);
$client = new GearmanClient();
$client->addServer('127.0.0.1', $req['port']);
$client->setTimeout((int)(1000 * ($req['timeout'] ?? 20)));
if (!empty($req['exceptions'])) {
    // GEARMAN_CLIENT_EXCEPTION (libgearman's 1 << 7); the extension has no constant for it.
    $client->addOptions(128);
}

function emit(array $event): void
{
    fwrite(STDOUT, json_encode($event, JSON_UNESCAPED_SLASHES) . "\n");
    fflush(STDOUT);
}

$mode = $req['mode'];
if ($mode === 'do') {
    foreach ($req['tasks'] as $i => $t) {
        $arg = hex2bin($t['arg']);
        $unique = $t['unique'] ?? '';
        $prio = $t['priority'] ?? 'normal';
        if (!empty($t['background'])) {
            $method = ['high' => 'doHighBackground', 'low' => 'doLowBackground',
                       'normal' => 'doBackground'][$prio];
            $handle = $client->$method($t['fn'], $arg, $unique);
            $ok = $client->returnCode() === GEARMAN_SUCCESS;
            emit(['ev' => $ok ? 'created' : 'fail', 'i' => $i, 'handle' => $handle]);
            continue;
        }
        $method = ['high' => 'doHigh', 'low' => 'doLow', 'normal' => 'doNormal'][$prio];
        // The tutorial's loop: do* returns early for each WORK_DATA / WARNING / STATUS.
        while (true) {
            $result = $client->$method($t['fn'], $arg, $unique);
            $rc = $client->returnCode();
            if ($rc === GEARMAN_WORK_DATA) {
                emit(['ev' => 'data', 'i' => $i, 'hex' => bin2hex($result)]);
            } elseif ($rc === GEARMAN_WORK_WARNING) {
                emit(['ev' => 'warning', 'i' => $i, 'hex' => bin2hex($result)]);
            } elseif ($rc === GEARMAN_WORK_STATUS) {
                [$n, $d] = $client->doStatus();
                emit(['ev' => 'status', 'i' => $i, 'n' => $n, 'd' => $d]);
            } elseif ($rc === GEARMAN_SUCCESS) {
                emit(['ev' => 'complete', 'i' => $i, 'hex' => bin2hex($result)]);
                break;
            } elseif ($rc === GEARMAN_WORK_EXCEPTION) {
                emit(['ev' => 'exception', 'i' => $i, 'hex' => bin2hex((string)$result)]);
                break;
            } else {
                emit(['ev' => 'fail', 'i' => $i, 'rc' => $rc, 'error' => $client->error()]);
                break;
            }
        }
    }
} elseif ($mode === 'tasks') {
    $client->setCreatedCallback(function (GearmanTask $task, $i): void {
        emit(['ev' => 'created', 'i' => $i, 'handle' => $task->jobHandle()]);
    });
    $client->setDataCallback(function (GearmanTask $task, $i): void {
        emit(['ev' => 'data', 'i' => $i, 'hex' => bin2hex($task->data())]);
    });
    $client->setWarningCallback(function (GearmanTask $task, $i): void {
        emit(['ev' => 'warning', 'i' => $i, 'hex' => bin2hex($task->data())]);
    });
    $client->setStatusCallback(function (GearmanTask $task, $i): void {
        emit(['ev' => 'status', 'i' => $i, 'n' => $task->taskNumerator(),
              'd' => $task->taskDenominator()]);
    });
    $client->setCompleteCallback(function (GearmanTask $task, $i): void {
        emit(['ev' => 'complete', 'i' => $i, 'hex' => bin2hex((string)$task->data())]);
    });
    $client->setFailCallback(function (GearmanTask $task, $i): void {
        emit(['ev' => 'fail', 'i' => $i]);
    });
    $client->setExceptionCallback(function (GearmanTask $task, $i): void {
        emit(['ev' => 'exception', 'i' => $i, 'hex' => bin2hex((string)$task->data())]);
    });
    foreach ($req['tasks'] as $i => $t) {
        $arg = hex2bin($t['arg']);
        $prio = $t['priority'] ?? 'normal';
        $bg = !empty($t['background']) ? 'Background' : '';
        $method = 'addTask' . ['high' => 'High', 'low' => 'Low', 'normal' => ''][$prio] . $bg;
        $client->$method($t['fn'], $arg, $i, $t['unique'] ?? '');
    }
    if (!$client->runTasks()) {
        emit(['ev' => 'error', 'rc' => $client->returnCode(), 'error' => $client->error()]);
    }
} elseif ($mode === 'status') {
    foreach ($req['handles'] as $i => $h) {
        [$known, $running, $n, $d] = $client->jobStatus($h);
        emit(['ev' => 'jobstatus', 'i' => $i, 'known' => (bool)$known,
              'running' => (bool)$running, 'n' => (int)$n, 'd' => (int)$d]);
    }
} elseif ($mode === 'unique_status') {
    foreach ($req['uniques'] as $i => $u) {
        [$known, $running, $n, $d] = $client->jobStatusByUniqueKey($u);
        emit(['ev' => 'jobstatus', 'i' => $i, 'known' => (bool)$known,
              'running' => (bool)$running, 'n' => (int)$n, 'd' => (int)$d]);
    }
} elseif ($mode === 'ping') {
    emit(['ev' => 'ping', 'ok' => $client->ping('interop ping')]);
} else {
    throw new Exception("unknown mode $mode");
}
emit(['ev' => 'end']);
